import math
from dataclasses import dataclass

import torch
from torch import nn

from models.placements import BlockLayout, Placement, SubLayout, arg, register


class DyT(nn.Module):
    """Dynamic Tanh: gamma * tanh(a x) + beta, a learnable scalar (init a0), gamma = 1, beta = 0
    per channel; an element-wise squashing in place of a norm (no statistics)."""

    def __init__(self, dim: int, a0: float) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(a0)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * x) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, alpha0={self.alpha.item():.3g}"


@register("dyt")
class DynamicTanh(Placement):
    """DyT: y = x + F(DyT(x)) per sub-layer, DyT(x) = gamma * tanh(a x) + beta, scalar a (init 0.5).

    Pre-LN with every norm of the model (input norms, final norm, and the embedding norm when it is
    switched on) replaced by DyT; `norm` does not apply. Argument `alpha0` is a's initial value
    (default 0.5, the paper's default; its LLaMA runs tune it per width). The QK-norm knob, when
    on, keeps its RMSNorm.

    Init: the default rule for the weights (N(0, init_std); `init_scheme` applies); DyT starts at
    a = alpha0, gamma = 1, beta = 0.
    """

    source = ("Zhu, Chen, He, LeCun, Liu, Transformers without Normalization (arXiv 2503.10622, "
              "CVPR 2025); jiachenzhu/DyT")

    @dataclass(frozen=True)
    class Args:
        alpha0: float = arg(0.5, must="a positive number", check=lambda a: 0.0 < a < math.inf)

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(in_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

    def make_norm(self, cfg, dim: int) -> nn.Module:
        return DyT(dim, self.args.alpha0)

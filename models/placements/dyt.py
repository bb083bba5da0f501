import math
from dataclasses import dataclass

import torch
from torch import nn

from models.placements import BlockLayout, Placement, SubLayout, arg, register


class DyT(nn.Module):
    """Dynamic Tanh: gamma * tanh(a x) (+ beta with `bias`), a learnable scalar, gamma per channel
    (init 1); an element-wise squashing in place of a norm (no statistics)."""

    def __init__(self, dim: int, a0: float, bias: bool) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(a0)))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.alpha * x) * self.weight
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, alpha={self.alpha.item():.3g}, bias={self.bias is not None}"


class Scalar(nn.Module):
    """x * s, s one learnable scalar: DyT's language-model recipe puts it after the embedding."""

    def __init__(self, s0: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), float(s0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _positive(a: float) -> bool:
    return 0.0 < a < math.inf


@register("dyt")
class DynamicTanh(Placement):
    """DyT: y = x + F(DyT(x)) per sub-layer, DyT(x) = gamma * tanh(a x), h0 = s * embed, s0 = sqrt(d).

    Pre-LN with every norm replaced by DyT, as the reference trains LLaMA (other_tasks/LLaMA of
    jiachenzhu/DyT and the paper's appendix on LLMs): no bias (beta), a separate initial a for the
    attention inputs (`alpha0_attn`), the MLP inputs (`alpha0_ffn`) and the final norm
    (`alpha0_final`), and a learnable scalar after the embedding initialised to sqrt(d_model)
    (without it the 0.02-std embeddings leave the stream at variance ~4e-4 and the blocks barely act
    at init). The defaults 0.8 / 0.2 / 0.2 are the reference's values for its smallest LLaMA (7B,
    d 4096); the paper tunes them per width (smaller for wider models) and ours are all far
    narrower, so treat them as a starting point (deviation: not re-tuned per size). `bias=true`
    restores the image-model DyT's beta (that recipe, with a0 = 0.5 everywhere and no embedding
    scalar, is a different arm). `norm` does not apply; the QK-norm knob keeps its RMSNorm.

    Init: the default rule for the weights (N(0, init_std); `init_scheme` applies); gamma = 1.
    """

    title = "DyT"
    source = ("Zhu, Chen, He, LeCun, Liu, Transformers without Normalization (arXiv 2503.10622, "
              "CVPR 2025); jiachenzhu/DyT")
    embed_norm = True  # the slot of the embedding scalar s

    @dataclass(frozen=True)
    class Args:
        alpha0_attn: float = arg(0.8, must="a positive number", check=_positive)
        alpha0_ffn: float = arg(0.2, must="a positive number", check=_positive)
        alpha0_final: float = arg(0.2, must="a positive number", check=_positive)
        bias: bool = arg(False)

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(in_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

    def make_norm(self, cfg, dim: int) -> nn.Module:
        return DyT(dim, self.args.alpha0_final, self.args.bias)

    def make_embed_norm(self, cfg) -> nn.Module:
        return Scalar(math.sqrt(cfg.d_model))

    def init_weights(self, model: nn.Module, cfg) -> None:
        super().init_weights(model, cfg)
        with torch.no_grad():  # each slot's own initial a (the reference's per-position alpha0)
            for block in model.blocks:
                block.attn_in_norm.alpha.fill_(self.args.alpha0_attn)
                block.mlp_in_norm.alpha.fill_(self.args.alpha0_ffn)
            if isinstance(model.final_norm, DyT):
                model.final_norm.alpha.fill_(self.args.alpha0_final)

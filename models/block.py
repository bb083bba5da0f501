"""The transformer block: the generic one that composes a placement's declared layout, and the base
every block shares. Init rules and diagnostics reach a block's output norms and residual projections
through its methods, never by matching module names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from models.config import ModelConfig
from models.layers import MLP, Attention


@dataclass(frozen=True)
class SubLayout:
    """The norm slots around one sub-layer F (attention or MLP) of the generic block:

        y = post( residual_scale * x + out( F( in(x) * in_scale ) ) )

    Each slot is a norm when True and the identity when False. `in_scale` is a constant (LayerNorm
    Scaling's 1/sqrt(l)), applied by the block, not learned.
    """

    in_norm: bool = False
    out_norm: bool = False
    post_norm: bool = False
    in_scale: float = 1.0
    residual_scale: float = 1.0


@dataclass(frozen=True)
class BlockLayout:
    attn: SubLayout
    mlp: SubLayout


class BlockBase(nn.Module):
    """An attention sub-layer `attn` then an MLP sub-layer `mlp`; subclasses wire them in forward.

    A placement that brings its own block class (B2T, HybridNorm) subclasses this, so init rules
    and diagnostics find its parts the same way as in the generic block.
    """

    attn: nn.Module
    mlp: MLP

    def output_norms(self) -> list[nn.Module]:
        """The norms on a sub-layer's output before the residual add (Peri-LN's N_out)."""
        return []

    def residual_projections(self) -> list[nn.Linear]:
        """The projections that write into the residual stream (the "scaled" init divides them)."""
        return [self.attn.o_proj, self.mlp.down_proj]


class Block(BlockBase):
    """The generic block: attention sub-layer then MLP sub-layer, each wired by its SubLayout."""

    def __init__(self, cfg: ModelConfig, layout: BlockLayout, make_norm: Callable[[], nn.Module],
                 attention: nn.Module | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.attn = attention if attention is not None else Attention(cfg)
        self.mlp = MLP(cfg)

        def slot(use: bool) -> nn.Module:
            return make_norm() if use else nn.Identity()

        # NOTE: this order is the parameters' order (optimizer state in checkpoints, init draws)
        a, m = layout.attn, layout.mlp
        self.attn_in_norm = slot(a.in_norm)
        self.attn_out_norm = slot(a.out_norm)
        self.attn_post_norm = slot(a.post_norm)
        self.mlp_in_norm = slot(m.in_norm)
        self.mlp_out_norm = slot(m.out_norm)
        self.mlp_post_norm = slot(m.post_norm)

    def output_norms(self) -> list[nn.Module]:
        lay = self.layout
        return [n for use, n in ((lay.attn.out_norm, self.attn_out_norm),
                                 (lay.mlp.out_norm, self.mlp_out_norm)) if use]

    @staticmethod
    def _sublayer(x: torch.Tensor, f: nn.Module, sub: SubLayout, n_in: nn.Module, n_out: nn.Module,
                  n_post: nn.Module) -> torch.Tensor:
        u = n_in(x)
        if sub.in_scale != 1.0:
            u = u * sub.in_scale
        r = x if sub.residual_scale == 1.0 else x * sub.residual_scale
        return n_post(r + n_out(f(u)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        lay = self.layout
        h = self._sublayer(x, self.attn, lay.attn, self.attn_in_norm, self.attn_out_norm,
                           self.attn_post_norm)
        return self._sublayer(h, self.mlp, lay.mlp, self.mlp_in_norm, self.mlp_out_norm,
                              self.mlp_post_norm)

    def extra_repr(self) -> str:
        scales = [f"{name}.{k}={getattr(sub, k):.4g}" for name, sub in (("attn", self.layout.attn),
                                                                        ("mlp", self.layout.mlp))
                  for k in ("in_scale", "residual_scale") if getattr(sub, k) != 1.0]
        return ", ".join(scales)

"""What a placement declares, and the one generic block that composes those declarations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from models.config import ModelConfig
from models.layers import (
    MLP,
    Attention,
    Norm,
    init_normal,
    scale_output_projections,
    scaled_init_factor,
)


@dataclass(frozen=True)
class SubLayout:
    """The norm slots around one sub-layer F (attention or MLP) of the generic block:

        y = post( residual_scale * x + out( F( in(x) * in_scale ) ) )

    Each slot is a norm when True and the identity when False.
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


class Block(nn.Module):
    """The generic block: attention sub-layer then MLP sub-layer, each wired by its SubLayout."""

    def __init__(self, cfg: ModelConfig, layout: BlockLayout, make_norm: Callable[..., nn.Module],
                 attention: nn.Module | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.attn = attention if attention is not None else Attention(cfg)
        self.mlp = MLP(cfg)
        for prefix, sub in (("attn", layout.attn), ("mlp", layout.mlp)):
            for slot in ("in", "out", "post"):
                use = getattr(sub, f"{slot}_norm")
                scale = sub.in_scale if slot == "in" else 1.0
                setattr(self, f"{prefix}_{slot}_norm", make_norm(scale=scale) if use else nn.Identity())

    @staticmethod
    def _sublayer(x: torch.Tensor, f: nn.Module, n_in: nn.Module, n_out: nn.Module,
                  n_post: nn.Module, residual_scale: float) -> torch.Tensor:
        r = x if residual_scale == 1.0 else x * residual_scale
        return n_post(r + n_out(f(n_in(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        lay = self.layout
        h = self._sublayer(x, self.attn, self.attn_in_norm, self.attn_out_norm, self.attn_post_norm,
                           lay.attn.residual_scale)
        return self._sublayer(h, self.mlp, self.mlp_in_norm, self.mlp_out_norm, self.mlp_post_norm,
                              lay.mlp.residual_scale)


class Placement:
    """A normalization placement. Subclasses set the class attributes and override `layout`; the
    class docstring's first line is the block equation, `source` the citation.

    Arguments (e.g. Mix-LN's alpha) are keyword arguments of the constructor, declared in `args`
    with their defaults; unknown arguments are errors.
    """

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""
    args: ClassVar[dict[str, Any]] = {}
    embed_norm: ClassVar[bool] = False  # default of ModelConfig.embed_norm=None
    final_norm: ClassVar[bool] = True

    def __init__(self, **args: Any) -> None:
        from models.config import ConfigError

        unknown = sorted(set(args) - set(self.args))
        if unknown:
            known = ", ".join(sorted(self.args)) or "none"
            raise ConfigError(f"placement {self.name!r} has no argument {unknown[0]!r} "
                              f"(its arguments: {known})")
        self.values: dict[str, Any] = {**self.args, **args}

    @classmethod
    def equation(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        """The layout of block `layer` (1-based) of `n_layers`."""
        raise NotImplementedError

    def make_norm(self, cfg: ModelConfig, dim: int, scale: float = 1.0) -> nn.Module:
        return Norm(cfg.norm, dim, cfg.norm_eps, scale)

    def make_attention(self, cfg: ModelConfig, layer: int) -> nn.Module:
        """The attention sub-layer of block `layer` (OLMo 2 and HybridNorm add q/k/v norms)."""
        return Attention(cfg)

    def make_block(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return Block(cfg, self.layout(layer, cfg.n_layers),
                     lambda scale=1.0: self.make_norm(cfg, cfg.d_model, scale),
                     attention=self.make_attention(cfg, layer))

    def embed_scale(self, cfg: ModelConfig) -> float:
        """Factor on the token embeddings (Gemma multiplies by sqrt(d))."""
        return 1.0

    def init_weights(self, model: nn.Module, cfg: ModelConfig) -> None:
        """Default rule: N(0, init_std) everywhere; `init_scheme="scaled"` divides the output
        projections' std by sqrt(2 n_layers). A placement with its own rule overrides this."""
        init_normal(model, cfg.init_std)
        if cfg.init_scheme == "scaled":
            scale_output_projections(model.blocks, scaled_init_factor(cfg.n_layers))

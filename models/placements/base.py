"""What a placement declares; the generic block that composes those declarations is models.block."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from models.block import Block, BlockBase, BlockLayout
from models.config import ModelConfig
from models.layers import Attention, Norm, init_normal, scaled_init_factor


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

    def make_norm(self, cfg: ModelConfig, dim: int) -> nn.Module:
        return Norm(cfg.norm, dim, cfg.norm_eps)

    def make_attention(self, cfg: ModelConfig, layer: int) -> nn.Module:
        """The attention sub-layer of block `layer` (OLMo 2 and HybridNorm add q/k/v norms)."""
        return Attention(cfg)

    def make_block(self, cfg: ModelConfig, layer: int) -> BlockBase:
        """Block `layer` (1-based); a placement with its own wiring returns its BlockBase subclass."""
        return Block(cfg, self.layout(layer, cfg.n_layers), lambda: self.make_norm(cfg, cfg.d_model),
                     attention=self.make_attention(cfg, layer))

    def embed_scale(self, cfg: ModelConfig) -> float:
        """Factor on the token embeddings (Gemma multiplies by sqrt(d))."""
        return 1.0

    def init_weights(self, model: nn.Module, cfg: ModelConfig) -> None:
        """Default rule: N(0, init_std) everywhere; `init_scheme="scaled"` divides the output
        projections' std by sqrt(2 n_layers). A placement with its own rule overrides this."""
        init_normal(model, cfg.init_std)
        if cfg.init_scheme == "scaled":
            factor = scaled_init_factor(cfg.n_layers)
            with torch.no_grad():
                for block in model.blocks:
                    for proj in block.residual_projections():
                        proj.weight.mul_(factor)

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import MLP, Attention
from models.placements import BlockBase, Placement, arg, register


class HybridNormBlock(BlockBase):
    """h = x + Attn_qkv(N_a(x)), then either u = N_m(h), y = u + F_m(u) (residual after the norm,
    HybridNorm) or y = h + F_m(N_m(h)) (Pre-Norm MLP, block 1 of HybridNorm*). N_a is the identity
    in HybridNorm blocks; Attn_qkv normalizes q, k and v per head."""

    def __init__(self, cfg, attention: nn.Module, attn_in_norm: nn.Module, mlp_norm: nn.Module,
                 residual_after_norm: bool) -> None:
        super().__init__()
        self.attn, self.mlp = attention, MLP(cfg)
        self.attn_in_norm, self.mlp_norm = attn_in_norm, mlp_norm
        self.residual_after_norm = residual_after_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        h = x + self.attn(self.attn_in_norm(x))
        u = self.mlp_norm(h)
        return (u if self.residual_after_norm else h) + self.mlp(u)


@register("hybridnorm")
class HybridNorm(Placement):
    """HybridNorm: h = x + Attn_qkv(x) (q, k, v RMS-normed per head), u = N(h), y = u + F_m(u).

    QKV-norm replaces the attention input norm; the MLP is "Post-Norm" in the paper's sense: the
    normalized stream u is both the MLP input and the residual: plain HybridNorm, as the
    reference's 1.2B configuration. With `star` (default false; true = the paper's HybridNorm*),
    block 1 is Pre-Norm in both sub-layers, h = x + Attn(N(x)),
    y = h + F_m(N(h)), keeping its QKV-norm (the reference's norm_pos_special_config for layer 0:
    attn_norm true, ffn_residual false). The stream after the last block is not normalized, so the
    final norm stays. q/k/v norms are RMSNorm over each head's dimension.

    Init: the default rule (N(0, init_std); `init_scheme` applies).
    """

    title = "HybridNorm"
    source = ("Zhuo et al., HybridNorm: Towards Stable and Efficient Transformer Training via "
              "Hybrid Normalization (arXiv 2503.04598); BryceZhuo/HybridNorm")

    @dataclass(frozen=True)
    class Args:
        star: bool = arg(False)

    def pre_norm_block(self, layer: int) -> bool:
        return self.args.star and layer == 1

    def make_attention(self, cfg, layer: int) -> nn.Module:
        return Attention(cfg, qk_norm=True, v_norm=True)

    def make_block(self, cfg, layer: int) -> HybridNormBlock:
        pre = self.pre_norm_block(layer)
        norm = lambda: self.make_norm(cfg, cfg.d_model)  # noqa: E731
        return HybridNormBlock(cfg, self.make_attention(cfg, layer),
                               attn_in_norm=norm() if pre else nn.Identity(), mlp_norm=norm(),
                               residual_after_norm=not pre)

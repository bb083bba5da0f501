import math

from torch import nn

from models.layers import init_normal
from models.placements import BlockLayout, Placement, SubLayout, register


@register("lns")
class LayerNormScaling(Placement):
    """LayerNorm Scaling: y = x + F(N(x) / sqrt(l)) per sub-layer of block l (1-based); final norm.

    Pre-LN whose input norms in block l are scaled by the constant 1/sqrt(l) (both sub-layers), so
    deep blocks' branches add less variance to the stream ("curse of depth"). The scale is fixed,
    not learned. NOTE: the reference repository tests the norm type with the wrong case and never
    applies the scaling; this file follows the paper's formula.

    Init: plain N(0, init_std) on every weight, never the depth-scaled init (the paper removes it:
    the 1/sqrt(l) factor already controls depth), so `init_scheme` does not apply.
    """

    title = "LayerNorm Scaling"
    source = ("Sun et al., The Curse of Depth in Large Language Models (arXiv 2502.05795), "
              "section 4 (LayerNorm Scaling)")

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(in_norm=True, in_scale=1.0 / math.sqrt(layer))
        return BlockLayout(attn=sub, mlp=sub)

    def init_weights(self, model: nn.Module, cfg) -> None:
        init_normal(model, cfg.init_std)

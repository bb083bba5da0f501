import math
from dataclasses import dataclass

from models.placements import BlockLayout, Placement, SubLayout, arg, register


@register("mix_ln")
class MixLN(Placement):
    """Mix-LN: blocks l <= floor(alpha L) Post-LN y = N(x + F(x)), the others Pre-LN y = x + F(N(x)).

    Post-LN in the shallow blocks keeps their gradients large, Pre-LN in the deep blocks keeps
    training stable. Argument `alpha` (default 0.25, the paper's choice) is the Post-LN share;
    alpha = 0 is Pre-LN throughout. The final norm before the LM head is kept (the reference code
    builds on LLaMA, whose final norm stays).

    Init: the default rule (N(0, init_std); `init_scheme` applies), as in the LLaMA-based reference.
    """

    title = "Mix-LN"
    source = ("Li, Yin, Liu, Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and "
              "Post-LN (arXiv 2412.13795); pixeli99/MixLN")

    @dataclass(frozen=True)
    class Args:
        alpha: float = arg(0.25, must="a number in [0, 1] (the share of Post-LN blocks)",
                           check=lambda a: 0.0 <= a <= 1.0)

    def post_ln_blocks(self, n_layers: int) -> int:
        return math.floor(self.args.alpha * n_layers)

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        if layer <= self.post_ln_blocks(n_layers):
            sub = SubLayout(post_norm=True)
        else:
            sub = SubLayout(in_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

import math
from typing import Any

from models.config import ConfigError
from models.placements import BlockLayout, Placement, SubLayout, register


@register("mix_ln")
class MixLN(Placement):
    """Mix-LN: blocks l <= floor(alpha L) Post-LN y = N(x + F(x)), the others Pre-LN y = x + F(N(x)).

    Post-LN in the shallow blocks keeps their gradients large, Pre-LN in the deep blocks keeps
    training stable. Argument `alpha` (default 0.25, the paper's choice) is the Post-LN share;
    alpha = 0 is Pre-LN throughout. The final norm before the LM head is kept (the reference code
    builds on LLaMA, whose final norm stays).

    Init: the default rule (N(0, init_std); `init_scheme` applies), as in the LLaMA-based reference.
    """

    source = ("Li, Yin, Liu, Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and "
              "Post-LN (arXiv 2412.13795); pixeli99/MixLN")
    args = {"alpha": 0.25}

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        alpha = self.values["alpha"]
        try:
            alpha = float(alpha)  # YAML may deliver 1e-1 as a string
        except (TypeError, ValueError):
            alpha = math.nan
        if isinstance(self.values["alpha"], bool) or not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"placement 'mix_ln': alpha must be a number in [0, 1] (the share of "
                              f"Post-LN blocks); got {self.values['alpha']!r}")
        self.values["alpha"] = alpha

    def post_ln_blocks(self, n_layers: int) -> int:
        return math.floor(self.values["alpha"] * n_layers)

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        if layer <= self.post_ln_blocks(n_layers):
            sub = SubLayout(post_norm=True)
        else:
            sub = SubLayout(in_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

import math

import torch
from torch import nn

from models.layers import MLP, Norm
from models.placements import BlockBase, Placement, register


class B2TBlock(BlockBase):
    """h = N_a(x + F_a(x)); y = N_m(x + h + F_m(h)): Post-LN plus the block input x carried past
    both norms to the block's last add (the bottom-to-top connection)."""

    def __init__(self, cfg, attention: nn.Module, make_norm) -> None:
        super().__init__()
        self.attn, self.mlp = attention, MLP(cfg)
        self.attn_post_norm, self.mlp_post_norm = make_norm(), make_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        h = self.attn_post_norm(x + self.attn(x))
        return self.mlp_post_norm(x + h + self.mlp(h))


@register("b2t")
class B2T(Placement):
    """B2T: h = N(x + F_a(x)), y = N(x + h + F_m(h)); no final norm.

    Post-LN, plus a skip from the block input to the input of its last norm: the gradient reaches
    lower blocks without passing through the attention sub-layer's norm, which is what makes deep
    Post-LN vanish. The stream is normalized after every block, so there is no final norm.

    Init, as the reference (takase/b2t_connection, `rescaling_init`, applied whenever the B2T
    connection is on): the default rule (N(0, init_std); `init_scheme` applies), then every
    non-norm weight of every block multiplied by n_layers^(-1/2). Deviation: the reference starts
    from fairseq's Xavier-uniform init, the suite from N(0, init_std) like every other arm.
    """

    title = "B2T"
    source = ("Takase et al., B2T Connection: Serving Stability and Performance in Deep "
              "Transformers (arXiv 2206.00330, Findings of ACL 2023); takase/b2t_connection")
    final_norm = False

    def init_weights(self, model: nn.Module, cfg) -> None:
        super().init_weights(model, cfg)
        factor = 1.0 / math.sqrt(cfg.n_layers)
        with torch.no_grad():
            for block in model.blocks:
                norms = {id(p) for m in block.modules() if isinstance(m, Norm) for p in m.parameters()}
                for p in block.parameters():
                    if p.ndim >= 2 and id(p) not in norms:
                        p.mul_(factor)

    def make_block(self, cfg, layer: int) -> B2TBlock:
        return B2TBlock(cfg, self.make_attention(cfg, layer),
                        lambda: self.make_norm(cfg, cfg.d_model))

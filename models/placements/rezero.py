import torch
from torch import nn

from models.layers import MLP
from models.placements import BlockBase, Placement, register


class ReZeroBlock(BlockBase):
    """h = x + alpha F_a(x); y = h + alpha F_m(h): no norm, one learned scalar alpha per block,
    shared by both sub-layers, initialised to 0 (the block starts as the identity)."""

    def __init__(self, cfg, attention: nn.Module) -> None:
        super().__init__()
        self.attn, self.mlp = attention, MLP(cfg)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        h = x + self.alpha * self.attn(x)
        return h + self.alpha * self.mlp(h)


@register("rezero")
class ReZero(Placement):
    """ReZero: h = x + alpha F_a(x), y = h + alpha F_m(h), alpha learned per block, init 0; no norms.

    Every block starts as the identity map, so at init the model is embedding -> LM head and the
    signal propagates through any depth; the blocks switch on as their alpha is learned. One alpha
    per block, shared by its attention and MLP sub-layers, as the reference's RZTXEncoderLayer
    (`resweight`). No norm anywhere: no final norm, no embedding norm (the QK-norm knob still
    applies). alpha is 1-D, so it is not weight-decayed (suite/train.py).

    Init: the default rule for the weights (N(0, init_std); `init_scheme` applies); alpha = 0.
    Deviation: the reference's Transformer uses post-attention dropout and a ReLU MLP; the suite's
    SwiGLU MLP and no dropout, like every other arm.
    """

    source = ("Bachlechner, Majumder, Mao, Cottrell, McAuley, ReZero is All You Need: Fast Convergence "
              "at Large Depth (UAI 2021, arXiv 2003.04887); majumderb/rezero")
    final_norm = False
    # alpha = 0 at init: the gradient of every weight behind it is exactly zero before the first
    # update (the generic checks then take one step before asking for a gradient everywhere)
    zero_init_gate = True

    def make_block(self, cfg, layer: int) -> ReZeroBlock:
        return ReZeroBlock(cfg, self.make_attention(cfg, layer))

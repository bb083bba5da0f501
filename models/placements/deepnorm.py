import torch
from torch import nn

from models.layers import init_normal
from models.placements import BlockLayout, Placement, SubLayout, register


@register("deepnorm")
class DeepNorm(Placement):
    """DeepNorm: h = N(alpha x + F_a(x)), y = N(alpha h + F_m(h)), alpha = (2L)^(1/4); no final norm.

    Post-LN with the residual up-weighted by alpha and the branches' init down-weighted by beta,
    so each update moves the model by a bounded amount. Constants for a decoder-only model of L
    blocks (the paper's "decoder-only" row): alpha = (2L)^(1/4), beta = (8L)^(-1/4). The stream is
    normalized after every add, so there is no final norm (torchscale with normalize_before=false).

    Init (the paper's pseudo-code, Fig. 2): Xavier-normal with gain beta for the MLP projections
    (gate, up, down: the paper's fc1/fc2), v_proj and o_proj (out_proj); Xavier-normal with gain 1
    for q_proj and k_proj; embeddings and LM head N(0, init_std). `init_scheme` does not apply.
    """

    title = "DeepNorm"
    source = ("Wang et al., DeepNet: Scaling Transformers to 1,000 Layers (arXiv 2203.00555); "
              "microsoft/torchscale")
    final_norm = False

    @staticmethod
    def alpha(n_layers: int) -> float:
        return (2.0 * n_layers) ** 0.25

    @staticmethod
    def beta(n_layers: int) -> float:
        return (8.0 * n_layers) ** -0.25

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(post_norm=True, residual_scale=self.alpha(n_layers))
        return BlockLayout(attn=sub, mlp=sub)

    def init_weights(self, model: nn.Module, cfg) -> None:
        init_normal(model, cfg.init_std)  # embeddings and LM head
        beta = self.beta(cfg.n_layers)
        with torch.no_grad():
            for block in model.blocks:
                a, f = block.attn, block.mlp
                # in the blocks' module order, so a seed gives the same weights as ever
                for proj, gain in ((a.q_proj, 1.0), (a.k_proj, 1.0), (a.v_proj, beta), (a.o_proj, beta),
                                   (f.gate_proj, beta), (f.up_proj, beta), (f.down_proj, beta)):
                    nn.init.xavier_normal_(proj.weight, gain=gain)

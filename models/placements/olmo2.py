from torch import nn

from models.layers import Attention
from models.placements import BlockLayout, Placement, SubLayout, register


@register("olmo2")
class OLMo2(Placement):
    """OLMo 2 (output norms only): h = x + N(F_a(x)), y = h + N(F_m(h)); full-width QK-norm.

    Peri-LN without the input norms: each sub-layer sees the raw residual stream and only its output
    is normalized before the add. q and k are RMS-normalized over the whole projected width (all
    heads together), not per head. Final norm before the LM head; no embedding norm. Norm eps 1e-6
    by default (OLMo 2's layer_norm_eps; `model.norm_eps` overrides it).

    Init (OLMo 2, section 3.2): every weight from N(0, init_std) truncated at +-3 std; no depth
    scaling (OLMo 2 dropped its earlier scaled init), so `init_scheme` does not apply.
    """

    title = "OLMo 2"
    source = ("OLMo et al., 2 OLMo 2 Furious (arXiv 2501.00656); OLMo-core "
              "ReorderedNormTransformerBlock")

    norm_eps = 1e-6

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(out_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

    def make_attention(self, cfg, layer: int) -> nn.Module:
        return Attention(cfg, qk_norm=True, qk_full_width=True)

    def init_weights(self, model: nn.Module, cfg) -> None:
        std = cfg.init_std
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-3 * std, b=3 * std)

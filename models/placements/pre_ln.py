from models.placements import BlockLayout, Placement, SubLayout, register


@register("pre_ln")
class PreLN(Placement):
    """Pre-LN: y = x + F(N(x)) per sub-layer; final norm before the LM head.

    The norm sits on the branch input only, so the residual stream itself is never normalized.
    """

    title = "Pre-LN"
    source = "Xiong et al., On Layer Normalization in the Transformer Architecture (arXiv 2002.04745); GPT-2"

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(in_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

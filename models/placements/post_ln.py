from models.placements import BlockLayout, Placement, SubLayout, register


@register("post_ln")
class PostLN(Placement):
    """Post-LN: y = N(x + F(x)) per sub-layer; no final norm (the stream is already normalized).

    The original Transformer's placement: it normalizes the residual stream after every add.
    """

    title = "Post-LN"
    source = "Vaswani et al., Attention Is All You Need (arXiv 1706.03762)"
    final_norm = False

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(post_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

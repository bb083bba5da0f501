from models.placements import BlockLayout, Placement, SubLayout, register


@register("peri_ln", aliases=("sandwich_ln",))
class PeriLN(Placement):
    """Peri-LN: y = x + N_out(F(N_in(x))) per sub-layer; embedding norm h0 = N(embed) (knob); final norm.

    Four norms per block. The output norm comes BEFORE the residual add, so the stream is never
    normalized (normalizing after the add would be Post-LN with an extra input norm). CogView's
    Sandwich-LN is the same block, registered here as the alias `sandwich_ln`.
    """

    title = "Peri-LN"
    source = ("Kim et al., Peri-LN: Revisiting Normalization Layer in the Transformer Architecture "
              "(ICML 2025, arXiv 2502.02732); Ding et al., CogView (arXiv 2105.13290) for Sandwich-LN")
    # NOTE: on by default: without it the unit-variance output norms swamp the 0.02-std embeddings
    # at init (docs/paper.md section 1, measured here); the paper's setting is [secondary].
    embed_norm = True

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(in_norm=True, out_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

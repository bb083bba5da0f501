from models.placements import register
from models.placements.pre_ln import PreLN


@register("pre_ln_embed_norm")
class PreLNEmbedNorm(PreLN):
    """Pre-LN + embedding norm: h0 = N(embed(tokens)), y = x + F(N(x)) per sub-layer; final norm.

    Pre-LN with Peri-LN's embedding norm and nothing else: set beside Pre-LN and Peri-LN, it
    separates the effect of normalizing the embeddings from that of the output norms. "Spike No
    More" shows that unit-scale embeddings (a LayerNorm on them, or scaling) remove loss spikes.

    Init: the default rule (N(0, init_std); `init_scheme` applies).
    """

    title = "Pre-LN + embedding norm"
    source = ("Takase, Kiyono, Kobayashi, Suzuki, Spike No More: Stabilizing the Pre-training of "
              "Large Language Models (arXiv 2312.16903)")
    embed_norm = True

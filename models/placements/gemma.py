import math

import torch
import torch.nn.functional as F
from torch import nn

from models.placements import BlockLayout, Placement, SubLayout, register


class OffsetRMSNorm(nn.Module):
    """Gemma's RMSNorm: x / rms(x) * (1 + w), w = 0 at init (a unit gain). Always RMS: Gemma has no
    LayerNorm variant, so `norm` does not apply. (The suite decays 2-D weights only, so w is not
    decayed here; where a trainer does decay it, (1 + w) is pulled towards one, not zero.)"""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    @property
    def gain(self) -> torch.Tensor:
        """The effective multiplicative gain (what the diagnostics report)."""
        return 1.0 + self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, 1.0 + self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"rmsnorm (1+w), {self.weight.shape[0]}, eps={self.eps}"


@register("gemma")
class Gemma(Placement):
    """Gemma: y = x + N_out(F(N_in(x))) per sub-layer, h0 = embed * sqrt(d), N(x) = x/rms(x) * (1+w).

    The Peri-LN block (Gemma 2/3 call the norms pre- and post-feedforward/attention norms) with two
    Gemma traits: token embeddings multiplied by sqrt(d_model) instead of an embedding norm, and
    RMSNorm gains stored as an offset from one (w = 0 at init). QK-norm (Gemma 3) is the model's
    `qk_norm` knob, off by default. Final norm before the LM head; no embedding norm.

    Init (HF gemma2 `_init_weights`): every Linear and Embedding weight from N(0, init_std), norm
    offsets w = 0; `init_scheme="scaled"` applies as for the default rule.
    """

    title = "Gemma"
    source = ("Gemma Team, Gemma 2 (arXiv 2408.00118) and Gemma 3 (arXiv 2503.19786); "
              "HF transformers models/gemma2 (Gemma2RMSNorm, embedding normalizer)")

    def layout(self, layer: int, n_layers: int) -> BlockLayout:
        sub = SubLayout(in_norm=True, out_norm=True)
        return BlockLayout(attn=sub, mlp=sub)

    def make_norm(self, cfg, dim: int) -> nn.Module:
        return OffsetRMSNorm(dim, cfg.norm_eps)

    def embed_scale(self, cfg) -> float:
        return math.sqrt(cfg.d_model)

    def init_weights(self, model: nn.Module, cfg) -> None:
        super().init_weights(model, cfg)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, OffsetRMSNorm):
                    m.weight.zero_()


"""The model's configuration: frozen, typed, validated once at construction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

NormKind = Literal["layernorm", "rmsnorm"]


class ConfigError(ValueError):
    """A user's input is wrong: the message is one line saying what, where and how to fix it."""

InitScheme = Literal["normal", "scaled"]


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice of the decoder as a knob.

    The default is LLaMA-style (RoPE, SwiGLU, no biases, RMSNorm) because the paper's exact
    architecture is unknown (docs/paper.md section 3): these defaults are ours, not the paper's.
    """

    vocab_size: int = 257
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: multi-head attention (= n_heads); fewer: GQA
    d_ff: int | None = None  # None: SwiGLU's 8/3 * d_model rounded up to a multiple of 64
    max_seq_len: int = 256
    norm: NormKind = "rmsnorm"
    norm_eps: float | None = None  # None: the placement's default (1e-5; OLMo 2 1e-6)
    placement: str = "pre_ln"
    placement_args: Mapping[str, Any] = field(default_factory=dict)
    embed_norm: bool | None = None  # None: the placement's default (on for Peri-LN)
    qk_norm: bool = False  # RMSNorm on each head's q and k (Attention's qk_norm; OLMo 2 sets its own)
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    init_std: float = 0.02
    init_scheme: InitScheme = "normal"  # "scaled": output projections x 1/sqrt(2 n_layers)
    dropout: float = 0.0
    pad_vocab_to: int = 1  # embedding/LM-head rows rounded up to this multiple (128 on GPU)

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement_args", MappingProxyType(dict(self.placement_args)))
        problems = []
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len", "pad_vocab_to"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            problems.append(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        elif self.head_dim % 2:
            problems.append(f"head dimension d_model/n_heads = {self.head_dim} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            problems.append(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if not isinstance(self.qk_norm, bool):
            problems.append(f"qk_norm must be true or false, got {self.qk_norm!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            problems.append(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.init_scheme not in ("normal", "scaled"):
            problems.append(f"init_scheme must be 'normal' or 'scaled', got {self.init_scheme!r}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ConfigError("model config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        # SwiGLU keeps the parameter count of a 4d GELU MLP with 8/3 d (Shazeer 2020).
        return -(-(8 * self.d_model // 3) // 64) * 64

    @property
    def padded_vocab(self) -> int:
        return -(-self.vocab_size // self.pad_vocab_to) * self.pad_vocab_to

    def replace(self, **changes: Any) -> ModelConfig:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ModelConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["placement_args"] = dict(self.placement_args)
        return out

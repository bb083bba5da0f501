"""Building blocks: norms, rotary embeddings, attention, SwiGLU MLP. No biases anywhere (LLaMA)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig


class Norm(nn.Module):
    """LayerNorm or RMSNorm with a learnable gain (no bias)."""

    def __init__(self, kind: str, dim: int, eps: float) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.weight.shape
        if self.kind == "layernorm":
            return F.layer_norm(x, shape, self.weight, None, self.eps)
        return F.rms_norm(x, shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.weight.shape[0]}, eps={self.eps}"


class Rotary(nn.Module):
    """RoPE tables, computed once for max_seq_len (Su et al. 2021), half-split rotation."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
        # not persistent: derived from the config, so checkpoints stay free of it
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, hd) -> same, each pair (x_i, x_{i+hd/2}) rotated by position x angle."""
        T = x.shape[-2]
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)  # (T, hd/2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    """Causal multi-head attention with GQA, RoPE and optional QK-norm, through SDPA (flash on GPU).

    qk_norm: RMSNorm on q and k, the same switch as ModelConfig.qk_norm (None: the config's). Over
    each head's dimension (the common QK-norm), or with qk_full_width over the whole projected width
    (all heads together, OLMo 2). v_norm adds a per-head norm on v (HybridNorm).
    """

    def __init__(self, cfg: ModelConfig, qk_norm: bool | None = None, qk_full_width: bool = False,
                 v_norm: bool = False) -> None:
        super().__init__()
        qk_norm = cfg.qk_norm if qk_norm is None else qk_norm
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.kv_heads, hd
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * hd, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * hd, d, bias=False)
        self.rotary = Rotary(hd, cfg.max_seq_len, cfg.rope_theta)
        self.qk_norm, self.qk_full_width, self.dropout = qk_norm, qk_full_width, cfg.dropout
        q_dim, k_dim = (cfg.n_heads * hd, self.n_kv * hd) if qk_full_width else (hd, hd)
        self.q_norm = Norm("rmsnorm", q_dim, cfg.norm_eps) if qk_norm else nn.Identity()
        self.k_norm = Norm("rmsnorm", k_dim, cfg.norm_eps) if qk_norm else nn.Identity()
        self.v_norm = Norm("rmsnorm", hd, cfg.norm_eps) if v_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, d)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_full_width:  # (q_norm and k_norm are identities when qk_norm is off)
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_norm(v.view(B, T, self.n_kv, self.hd)).transpose(1, 2)
        if not self.qk_full_width:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv != self.n_heads,
        )  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ff_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ff_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def init_normal(module: nn.Module, std: float) -> None:
    """N(0, std) on every Linear and Embedding weight; norms keep their unit gain."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)


def scaled_init_factor(n_layers: int) -> float:
    """GPT-2 / Megatron: the residual projections' std x 1/sqrt(2 n_layers), so the stream's
    variance does not grow with depth."""
    return 1.0 / math.sqrt(2 * n_layers)

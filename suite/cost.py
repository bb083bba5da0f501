"""The cost model, in one place: training FLOPs per token, a run's tokens (and the steps a token
budget fixes), MFU, the peak FLOP/s of a device, and the vocabulary size of named tokenizers.

    flops_per_token = 6 x (non-embedding parameters + LM head d_model x vocab)
                      + 12 x n_layers x d_model x seq_len
    MFU = flops_per_token x tokens/s per device / peak FLOP/s of one device

The PaLM convention (Chowdhery et al. 2022, appendix B; docs/stack.md's MFU): forward + backward
matmul FLOPs, the attention scores counted in full (not halved for the causal mask), the LM head
at the real vocabulary (not the padded one). Parameters are counted on a meta-device build, so
any placement's extra parameters count, without memory.

Peak FLOP/s of the device a run is on: Lightning's `get_available_flops` (it tells H100 SXM,
PCIe and NVL apart), except for the H200 (below); none for a CPU. `periln plan` prices a GPU the
planning machine need not have: an H100 SXM unless `--peak-tflops` says otherwise.

Estimating a sweep's cost (`periln plan`) builds models on the meta device (models, torch) and
never loads the trainer (suite.train, Lightning); Lightning is imported for a device's peak only.
"""

from __future__ import annotations

import dataclasses
import platform
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from models import ModelConfig
    from suite.config import RunConfig

CL100K = "tiktoken:cl100k_base"  # the paper's tokenizer
# Vocabulary sizes of tokenizers that may not be loadable offline (estimates, random-token benches).
KNOWN_VOCAB = {CL100K: 100277, "tiktoken:o200k_base": 200019, "tiktoken:r50k_base": 50257,
               "tiktoken:gpt2": 50257, "tiktoken:p50k_base": 50281}
GUESSED_VOCAB = 50257  # an unknown tokenizer that cannot be loaded: a GPT-2-sized estimate
DEFAULT_MFU = 0.40  # ours: docs/stack.md measured 0.435 for a 411M model on one H100 (bf16, compiled)
# Dense bf16/fp16 tensor-core peak of an H100 SXM (NVIDIA's datasheet: 1,979 TFLOP/s with
# sparsity, half without; Lightning's figure too). The H200 has the same compute and more, faster
# memory (docs/stack.md). `periln plan`'s default GPU.
HOPPER_SXM_DENSE_16BIT = 989.4e12


# ------------------------------------------------------------------------------------- tokens

def vocab_size(tokenizer: str) -> int:
    """The vocabulary size of a tokenizer spec (data.tokenizer), without loading it when known."""
    if tokenizer in KNOWN_VOCAB:
        return KNOWN_VOCAB[tokenizer]
    from suite.tokenizer import load_tokenizer

    try:
        return load_tokenizer(tokenizer).vocab_size
    except Exception:  # offline or missing: an estimate is still wanted
        return GUESSED_VOCAB


def tokens_per_step(cfg: RunConfig) -> int:
    t = cfg.train
    return t.seq_len * t.batch_size * t.accumulate * t.devices * t.num_nodes


def resolve_budget(cfg: RunConfig) -> RunConfig:
    """A token budget (train.tokens) fixes max_steps."""
    if cfg.train.tokens is None:
        return cfg
    steps = max(1, cfg.train.tokens // tokens_per_step(cfg))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))


# -------------------------------------------------------------------------------------- FLOPs

def flops_per_token(mc: ModelConfig, seq_len: int, non_embedding_params: int) -> float:
    """Training FLOPs per token (the module docstring's formula)."""
    lm_head = mc.d_model * mc.vocab_size
    return 6.0 * (non_embedding_params + lm_head) + 12.0 * mc.n_layers * mc.d_model * seq_len


def non_embedding_params(cfg: RunConfig, vocab: int) -> tuple[ModelConfig, int]:
    """The model's config and non-embedding parameter count, from a meta-device build (exact for
    every placement, no memory)."""
    import torch

    from models import build_model

    mc = cfg.model_config(vocab)
    with torch.device("meta"):
        model = build_model(mc)
    return mc, model.num_params(non_embedding=True)


def run_flops_per_token(cfg: RunConfig, vocab: int) -> float:
    mc, n = non_embedding_params(cfg, vocab)
    return flops_per_token(mc, cfg.train.seq_len, n)


def mfu(flops_token: float, tokens_per_s_per_device: float, peak_flops: float | None) -> float | None:
    return None if not peak_flops else flops_token * tokens_per_s_per_device / peak_flops


# ------------------------------------------------------------------------------- device peaks

def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or device.type


def compute_dtype(precision: str) -> torch.dtype | None:
    """The matmul dtype of a Lightning precision ("bf16-mixed", "32-true", ...); None for one
    without a single dtype (transformer-engine's fp8)."""
    import torch

    for prefix, dtype in (("bf16", torch.bfloat16), ("16", torch.float16), ("32", torch.float32),
                          ("64", torch.float64)):
        if str(precision).startswith(prefix):
            return dtype
    return None


def device_peak(device: torch.device, precision: str,
                override: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, what it is) of one device at a precision; (None, why) when none is known.
    `override`: the user's figure (--peak-flops), taken as it is."""
    if override:
        return float(override), f"{override:.4g} FLOP/s (--peak-flops)"
    import torch

    name, dtype = device_name(device), compute_dtype(precision)
    unknown = None, f"n/a (no known peak for {name} at precision {precision}; pass --peak-flops)"
    if dtype is None:
        return unknown
    if "h200" in name.lower():
        # Lightning (2.6) resolves an H200 only when its name has "SXM1" or "NVL1" ("NVIDIA H200"
        # has neither) and lists it at the datasheet's with-sparsity figures, twice the dense peak
        # MFU is measured against. The SXM part computes like an H100 SXM; the NVL one is slower.
        if dtype in (torch.bfloat16, torch.float16) and "nvl" not in name.lower():
            return HOPPER_SXM_DENSE_16BIT, (f"{HOPPER_SXM_DENSE_16BIT:.4g} FLOP/s ({name}, {precision}: "
                                            "dense, as an H100 SXM)")
        return unknown
    from lightning.fabric.utilities.throughput import get_available_flops

    with warnings.catch_warnings():  # its "FLOPs not found" warning: the n/a line says it
        warnings.simplefilter("ignore")
        peak = get_available_flops(device, dtype)
    if not peak:
        return unknown
    return float(peak), f"{peak:.4g} FLOP/s ({name}, {precision}: Lightning's get_available_flops)"


# ------------------------------------------------------------------------------- sweep cost

@dataclass(frozen=True)
class Cost:
    tokens: int  # per run
    flops: float  # per run
    gpu_hours: float  # per run


def estimate(cells: list[RunConfig], mfu: float = DEFAULT_MFU,
             peak_flops: float = HOPPER_SXM_DENSE_16BIT) -> dict[str, Cost]:
    """Tokens, FLOPs and GPU-hours (at `mfu` of `peak_flops`) of every cell, by run key."""
    per_shape: dict[tuple, float] = {}
    out = {}
    for cell in cells:
        cell = resolve_budget(cell)
        vocab = vocab_size(cell.data.tokenizer)
        shape = (cell.placement, tuple(sorted(cell.placement_args.items())), cell.size,
                 tuple(sorted(cell.model.items())), vocab, cell.train.seq_len)
        if shape not in per_shape:
            per_shape[shape] = run_flops_per_token(cell, vocab)
        tokens = cell.train.max_steps * tokens_per_step(cell)
        flops = tokens * per_shape[shape]
        out[cell.key] = Cost(tokens=tokens, flops=flops, gpu_hours=flops / (peak_flops * mfu) / 3600)
    return out

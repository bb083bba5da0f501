"""The GPU fast path: what `train.precision="auto"`, `train.compile="auto"`, `train.strategy` and
`train.activation_checkpointing` turn into, in one place (suite/train.py calls these).

On a CUDA GPU by default: bf16 autocast, torch.compile of the model and its loss (inductor's and
Triton's caches under `<data.cache_dir>/compile/`, so a second run of the same shapes skips most of
the compilation), fused AdamW (LitLM), the vocabulary padded to a multiple of 128 (the padded
logits are sliced off in models/transformer.py), no host read of a tensor in a training step that
is not a logging step (LossBar below). On CPU all of it is off except what costs nothing; every
choice can be forced with its `train.*` setting.

Multi-GPU: "ddp" is Lightning's DDPStrategy (gradient buckets as views); "fsdp" is its FSDPStrategy
with one FSDP unit per transformer block, bf16 parameters with fp32 gradient reduction under
bf16-mixed, optional activation checkpointing per block, and each block compiled on its own.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch import nn

from models import ConfigError
from suite.config import RunConfig, TrainConfig

VOCAB_MULTIPLE_GPU = 128  # embedding / LM-head rows rounded up to this on a GPU (tensor-core tiles)
# wrapper prefixes that FSDP / checkpointing / compile insert into parameter names
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def on_cuda(t: TrainConfig) -> bool:
    """Whether this run's accelerator is a CUDA GPU (as Lightning will resolve `accelerator`)."""
    if t.accelerator in ("cuda", "gpu"):
        return True
    return t.accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(t: TrainConfig) -> str:
    """"auto": bf16 autocast on a CUDA GPU that supports bf16, else full fp32."""
    if t.precision != "auto":
        return t.precision
    return "bf16-mixed" if on_cuda(t) and torch.cuda.is_bf16_supported() else "32"


def resolve_compile(t: TrainConfig, device_type: str) -> bool:
    """"auto": torch.compile on CUDA only (on CPU compilation costs more than it saves in short runs)."""
    return device_type == "cuda" if t.compile == "auto" else bool(t.compile)


def vocab_multiple(t: TrainConfig) -> int:
    return VOCAB_MULTIPLE_GPU if on_cuda(t) else 1


def module_run(cfg: RunConfig) -> RunConfig:
    """The run as LitLM gets it (and its checkpoints keep it): on a GPU, unless the run sets
    model.pad_vocab_to itself, the vocabulary is padded to a multiple of 128."""
    multiple = vocab_multiple(cfg.train)
    if multiple > 1 and cfg.model.pad_vocab_to is None:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pad_vocab_to=multiple))
    return cfg


def use_compile_cache(cache_dir: str | Path) -> Path:
    """Persistent compile caches under `<cache_dir>/compile/` (unless the environment already names
    them): inductor's FX-graph and AOTAutograd caches and Triton's kernel cache."""
    root = Path(cache_dir).expanduser().resolve() / "compile"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def clean_name(name: str) -> str:
    """A parameter's name without the wrappers' prefixes (FSDP, checkpointing, compile)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def block_types(cfg: RunConfig) -> set[type[nn.Module]]:
    """The module classes of this run's transformer blocks (built on the meta device: no memory)."""
    from models import build_model

    with torch.device("meta"):
        model = build_model(cfg.model_config(vocab_size=257))
    return {type(b) for b in model.blocks}


def make_strategy(cfg: RunConfig) -> Any:
    """`train.strategy` as a Lightning strategy: "auto" unchanged, "ddp", or "fsdp" per block."""
    t = cfg.train
    if t.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(gradient_as_bucket_view=True)
    if t.strategy == "fsdp":
        if not on_cuda(t):  # Lightning's and torch's FSDP (v1) both refuse a CPU-only run
            raise ConfigError(f"train.strategy: fsdp needs CUDA GPUs (accelerator {t.accelerator!r} "
                              "here); use ddp (gloo) on CPU")
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp import MixedPrecision

        blocks = block_types(cfg)
        mixed = None
        if resolve_precision(t) == "bf16-mixed":
            # bf16 compute and all-gathers; gradients reduced in fp32 and buffers (RoPE tables)
            # kept in fp32 (Lightning's default reduces gradients in bf16)
            mixed = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                   buffer_dtype=torch.float32)
        return FSDPStrategy(auto_wrap_policy=blocks, mixed_precision=mixed,
                            activation_checkpointing_policy=blocks if t.activation_checkpointing else None,
                            sharding_strategy="FULL_SHARD", state_dict_type="full",
                            limit_all_gathers=True, use_orig_params=True)
    return t.strategy


def is_fsdp(module_or_strategy: Any) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module_or_strategy, (FSDPStrategy, FullyShardedDataParallel))


def clip_grad_norm(lit: Any, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm to `max_norm`; returns the norm before clipping.

    Under FSDP each rank holds a shard of every gradient, so `torch.nn.utils.clip_grad_norm_` over
    the local parameters would see a local norm: the root FSDP module's own `clip_grad_norm_`
    reduces the squared norms across ranks first. Elsewhere (one device, DDP after its all-reduce)
    the local gradients are the global ones.
    """
    trainer = getattr(lit, "_trainer", None)
    root = trainer.strategy.model if trainer is not None else None
    if root is not None and is_fsdp(root):
        return root.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(lit.parameters(), max_norm)


class LossBar(TQDMProgressBar):
    """The progress bar, refreshed every `refresh_rate` steps, showing train/loss.

    LitLM logs train/loss with prog_bar=False: Lightning converts prog_bar metrics to Python numbers
    after EVERY batch (a device-to-host copy, i.e. a sync per step on a GPU), whatever the refresh
    rate. Here the loss tensor is read only when the bar refreshes.
    """

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            items["train/loss"] = f"{float(loss):.4g}"
        return items


def progress_callbacks(t: TrainConfig) -> list[Any]:
    return [LossBar(refresh_rate=t.log_every)] if t.progress_bar else []

"""The GPU fast path (suite/fastpath.py) on CPU: vocabulary padding, what "auto" resolves to,
compiled = eager, activation checkpointing = plain, weight-decay groups that survive wrappers, no
host read of a tensor between logging steps, and a real 2-process DDP run (gloo). The GPU-only
checks at the end are skipped without CUDA."""

import collections
import csv
import json
import math
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from models import ConfigError, ModelConfig, build_model
from models.placements import load_all
from suite import fastpath
from suite.config import load_run_config
from suite.train import LitLM, train

REPO = Path(__file__).resolve().parents[1]
TINY = dict(d_model=64, n_layers=4, n_heads=4, d_ff=176, max_seq_len=32)


# ------------------------------------------------------------------------- vocabulary padding

@pytest.mark.parametrize("tie", [False, True])
def test_vocab_padding_keeps_real_logits_and_the_loss(tie):
    cfg = ModelConfig(vocab_size=257, tie_embeddings=tie, **TINY)
    torch.manual_seed(0)
    plain = build_model(cfg)
    padded = build_model(cfg.replace(pad_vocab_to=128))
    assert padded.embed.weight.shape[0] == 384 and padded.lm_head.weight.shape[0] == 384  # 3 x 128
    # the same weights; the padding rows keep their own random values: they must not matter
    target = padded.state_dict()
    with torch.no_grad():
        for name, value in plain.state_dict().items():
            target[name][: value.shape[0]].copy_(value)
    tokens = torch.randint(0, 257, (3, 17), generator=torch.Generator().manual_seed(1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    want, got = plain(inputs), padded(inputs)
    assert got.shape == want.shape == (3, 16, 257)  # the padded columns are never returned
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    loss = F.cross_entropy(want.flatten(0, 1), targets.flatten())
    torch.testing.assert_close(F.cross_entropy(got.flatten(0, 1), targets.flatten()), loss, rtol=0, atol=1e-6)

    # the alternative (loss over all 384 columns, the padded ones masked to -inf) is the same loss:
    # exp(-inf) = 0 adds nothing to the softmax's normaliser
    full = padded.lm_head(padded.final_norm(_stream(padded, inputs)))  # (3, 16, 384)
    masked = full.masked_fill(torch.arange(384) >= 257, -math.inf)
    torch.testing.assert_close(F.cross_entropy(masked.flatten(0, 1), targets.flatten()), loss,
                               rtol=0, atol=1e-6)


def _stream(model, inputs):
    x = model.embed_norm(model.embed(inputs) * model.embed_scale)
    for block in model.blocks:
        x = block(x)
    return x


def test_the_gpu_pads_the_vocabulary_in_the_checkpointed_run_only():
    gpu = load_run_config(None, ["train.accelerator=gpu"])
    cpu = load_run_config(None, ["train.accelerator=cpu"])
    assert fastpath.module_run(gpu).to_dict()["model"] == {"pad_vocab_to": 128}
    assert fastpath.module_run(cpu) == cpu
    own = load_run_config(None, ["train.accelerator=gpu", "model.pad_vocab_to=64"])
    assert fastpath.module_run(own).to_dict()["model"] == {"pad_vocab_to": 64}  # the run's own choice wins
    assert gpu.to_dict()["model"] == {}  # config.yaml and the MLflow params stay as given

    # a checkpoint's hyperparameters rebuild the padded shapes (how evals load a checkpoint)
    lit = LitLM(fastpath.module_run(gpu), vocab_size=257)
    again = LitLM(lit.hparams["run"], lit.hparams["vocab_size"])
    again.load_state_dict(lit.state_dict())
    assert again.model.embed.weight.shape[0] == 384
    assert again(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 257)


# ------------------------------------------------------------------------------ what "auto" is

def test_auto_settings_resolve_by_device():
    cpu = load_run_config(None, ["train.accelerator=cpu"]).train
    gpu = load_run_config(None, ["train.accelerator=gpu"]).train
    assert cpu.precision == "auto" and cpu.compile == "auto"  # the defaults
    assert fastpath.resolve_precision(cpu) == "32"
    assert fastpath.resolve_compile(cpu, "cpu") is False and fastpath.resolve_compile(gpu, "cuda") is True
    assert fastpath.vocab_multiple(cpu) == 1 and fastpath.vocab_multiple(gpu) == 128
    forced = load_run_config(None, ["train.compile=true", "train.precision=bf16-mixed"]).train
    assert fastpath.resolve_compile(forced, "cpu") is True
    assert fastpath.resolve_precision(forced) == "bf16-mixed"
    assert fastpath.resolve_compile(load_run_config(None, ["train.compile=false"]).train, "cuda") is False
    with pytest.raises(ConfigError, match="train.compile: expected one of auto, True, False"):
        load_run_config(None, ["train.compile=1"])


def test_strategies():
    from lightning.pytorch.strategies import DDPStrategy

    ddp = fastpath.make_strategy(load_run_config(None, ["train.strategy=ddp"]))
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["gradient_as_bucket_view"] is True
    with pytest.raises(ConfigError, match="fsdp needs CUDA GPUs"):
        fastpath.make_strategy(load_run_config(None, ["train.strategy=fsdp", "train.accelerator=cpu"]))


def test_fsdp_units_are_every_placements_blocks():
    for name in sorted(load_all()):
        cfg = load_run_config(None, [f"placement={name}", "size=tiny"])
        built = build_model(cfg.model_config(257))
        assert fastpath.block_types(cfg) == {type(b) for b in built.blocks}, name


# --------------------------------------------------------- optimizer groups survive wrappers

def test_weight_decay_groups_are_decided_before_wrappers_flatten_weights():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    lit = LitLM(load_run_config(None, ["train.weight_decay=0.3"]).to_dict(), vocab_size=257)
    want = {id(p) for p in lit.parameters() if p.ndim == 2}
    # what FSDP does: insert its own module prefixes, then turn every parameter into a 1-D view
    for i, block in enumerate(lit.model.blocks):
        lit.model.blocks[i] = checkpoint_wrapper(block)
    assert any("_checkpoint_wrapped_module." in n for n, _ in lit.named_parameters())
    with torch.no_grad():
        for p in lit.parameters():
            p.data = p.data.flatten()
    groups = lit.configure_optimizers()["optimizer"].param_groups
    assert {id(p) for g in groups if g["weight_decay"] == 0.3 for p in g["params"]} == want
    assert fastpath.clean_name("model.blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.w") \
        == "model.blocks.0.mlp.w"


# -------------------------------------------------------- compiled and checkpointed = eager

def _loss_and_grads(lit, batch, fn):
    lit.zero_grad(set_to_none=True)
    loss = fn(batch[:, :-1], batch[:, 1:])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in lit.parameters()]


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    cfg = load_run_config(None, ["placement=peri_ln", "train.activation_checkpointing=true"])
    lit = LitLM(cfg.to_dict(), vocab_size=257)
    lit.configure_model()  # no trainer: CPU, not FSDP -> the model recomputes its blocks
    assert lit.model.checkpoint_blocks and lit._compiled_loss is None  # compile "auto": off on CPU
    batch = torch.randint(0, 257, (4, 33), generator=torch.Generator().manual_seed(0))
    loss_ckpt, grads_ckpt = _loss_and_grads(lit, batch, lit._loss_eager)
    lit.model.checkpoint_blocks = False
    loss, grads = _loss_and_grads(lit, batch, lit._loss_eager)
    assert loss_ckpt == loss
    for a, b in zip(grads_ckpt, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _c_compiler() -> str | None:
    return shutil.which("gcc") or shutil.which("cc") or shutil.which("clang")


@pytest.mark.slow
@pytest.mark.skipif(_c_compiler() is None, reason="torch.compile (inductor) on CPU needs a C compiler")
def test_compiled_and_eager_agree_and_the_compile_cache_persists(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    torch._dynamo.reset()
    cfg = load_run_config(None, ["placement=peri_ln", "train.compile=true", "model.n_layers=2",
                                 f"data.cache_dir={tmp_path / 'cache'}"])
    torch.manual_seed(0)
    lit = LitLM(cfg.to_dict(), vocab_size=257)
    lit.configure_model()
    assert lit._compiled_loss is not None
    batch = torch.randint(0, 257, (4, 33), generator=torch.Generator().manual_seed(0))
    try:
        loss_c, grads_c = _loss_and_grads(lit, batch, lit._compiled_loss)
    except Exception as err:  # inductor cannot build here (toolchain): not what this test checks
        if "BackendCompilerFailed" in type(err).__name__ or "InductorError" in type(err).__name__:
            pytest.skip(f"inductor cannot compile on this machine: {str(err).splitlines()[0][:200]}")
        raise
    loss_e, grads_e = _loss_and_grads(lit, batch, lit._loss_eager)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    cache = tmp_path / "cache" / "compile" / "inductor"
    assert Path(torch._inductor.runtime.runtime_utils.cache_dir()) == cache.resolve()
    assert any(cache.rglob("*")), "nothing written to the persistent compile cache"
    torch._dynamo.reset()


# ----------------------------------------------------- no host sync between logging steps

READS = {"item", "__float__", "__bool__", "__int__", "__index__", "__format__", "tolist", "numpy", "cpu"}


class _Step(L.Callback):
    current = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _Step.current = trainer.global_step + 1  # the optimizer step this batch makes

    def on_train_end(self, trainer, pl_module):
        _Step.current = None


class _HostReads(TorchFunctionMode):
    """Counts, per training step, the calls that copy a tensor's value to the host (on a GPU, each
    one waits for the device). CPU-only exception: torch's single-tensor AdamW reads its step
    counter, a CPU tensor; the fused AdamW that LitLM uses on CUDA keeps it on the device."""

    def __init__(self):
        super().__init__()
        self.reads = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READS and _Step.current is not None:
            if not any("torch/optim/" in f.filename for f in traceback.extract_stack(limit=16)):
                self.reads[_Step.current] += 1
        return func(*args, **(kwargs or {}))


def test_no_host_reads_between_logging_steps(tmp_path, run_overrides):
    cfg = load_run_config(None, run_overrides + [
        "train.progress_bar=true", "train.max_steps=12", "train.log_every=4", "train.val_every=1000",
        "train.ckpt_every=1000", "diagnostics.check_every=4", "diagnostics.every=4", "train.seq_len=32",
        "train.batch_size=4", "data.synthetic_docs=500"])
    with _HostReads() as mode:
        result = train(cfg, [_Step()])
    assert result["step"] == 12
    # logging (Lightning, MLflow/CSV, tokens/s, the progress bar) and the diagnostics read only on
    # their steps, plus once at the first step for the diagnostics' probe at initialization; every
    # other step runs without one host read
    assert set(mode.reads) == {1, 4, 8, 12}, dict(mode.reads)


# ------------------------------------------------------------------------ DDP, 2 processes

def _metrics(run_dir: Path) -> list[dict[str, str]]:
    (path,) = run_dir.glob("logs/version_*/metrics.csv")
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_match_one_process(tmp_path):
    common = [f"data.cache_dir={tmp_path / 'cache'}", "train.progress_bar=false", "train.seq_len=32",
              "data.synthetic_docs=500", "train.max_steps=4", "train.val_every=4", "train.log_every=1",
              "train.accelerator=cpu", "lr=1e-3", "diagnostics.enabled=false"]
    runs = {"one": ["train.batch_size=8"],
            "ddp": ["train.batch_size=4", "train.devices=2", "train.strategy=ddp"]}
    for name, extra in runs.items():  # a subprocess each: Lightning's DDP re-launches the script
        proc = subprocess.run([sys.executable, "-m", "suite.cli", "train", *common, *extra,
                               f"out_dir={tmp_path / name}"], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = {name: tmp_path / name / "default" / "pre_ln-tiny-lr0.001-s0" for name in runs}
    results = {name: json.loads((d / "result.json").read_text()) for name, d in dirs.items()}
    assert results["ddp"]["step"] == 4 and math.isfinite(results["ddp"]["val_loss"])
    # step 1's gradient is a pure function of the initial weights and the global batch: the two
    # ranks' halves (StepSampler), all-reduced, give the one process's norm
    first = {name: next(float(r["train/grad_norm"]) for r in _metrics(d) if r.get("train/grad_norm"))
             for name, d in dirs.items()}
    assert first["ddp"] == pytest.approx(first["one"], rel=1e-5), first
    assert results["ddp"]["val_loss"] == pytest.approx(results["one"]["val_loss"], abs=2e-3)


# ------------------------------------------------------------------------------ GPU only

@pytest.mark.gpu
def test_gpu_defaults_are_the_fast_path(tmp_path, run_overrides):
    seen = {}

    class Look(L.Callback):
        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            seen.update(precision=trainer.precision, compiled=pl_module._compiled_loss is not None,
                        rows=pl_module.model.embed.weight.shape[0], fused=opt.defaults.get("fused"),
                        pinned=trainer.train_dataloader.pin_memory)

    cfg = load_run_config(None, run_overrides + ["train.max_steps=20", "train.accelerator=gpu"])
    result = train(cfg, [Look()])
    assert math.isfinite(result["train_loss"])
    assert seen == dict(precision="bf16-mixed", compiled=True, rows=384, fused=True, pinned=True)


@pytest.mark.gpu
def test_gpu_no_sync_between_logging_steps(tmp_path, run_overrides):
    class SyncGuard(L.Callback):
        """CUDA raises on any synchronising call in steps that are not logging steps (after 3
        warm-up steps: compilation and the first allocations may synchronise)."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step = trainer.global_step + 1
            torch.cuda.set_sync_debug_mode("error" if step > 3 and step % 5 else "default")

        def on_train_end(self, trainer, pl_module):
            torch.cuda.set_sync_debug_mode("default")

    cfg = load_run_config(None, run_overrides + [
        "train.max_steps=20", "train.accelerator=gpu", "train.log_every=5", "train.val_every=1000",
        "train.ckpt_every=1000", "diagnostics.check_every=5", "diagnostics.every=10"])
    try:
        result = train(cfg, [SyncGuard()])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result["step"] == 20


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP sharding needs two GPUs")
def test_gpu_fsdp_clips_the_global_norm(tmp_path):
    common = [f"data.cache_dir={tmp_path / 'cache'}", "train.progress_bar=false", "train.seq_len=64",
              "data.synthetic_docs=500", "train.max_steps=4", "train.val_every=4", "train.log_every=1",
              "train.accelerator=gpu", "train.precision=32", "train.compile=false",
              "diagnostics.enabled=false"]
    runs = {"one": ["train.batch_size=8"],
            "fsdp": ["train.batch_size=4", "train.devices=2", "train.strategy=fsdp",
                     "train.activation_checkpointing=true"]}
    for name, extra in runs.items():
        proc = subprocess.run([sys.executable, "-m", "suite.cli", "train", *common, *extra,
                               f"out_dir={tmp_path / name}"], cwd=REPO, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    dirs = {name: tmp_path / name / "default" / "pre_ln-tiny-lr0.001-s0" for name in runs}
    first = {name: next(float(r["train/grad_norm"]) for r in _metrics(d) if r.get("train/grad_norm"))
             for name, d in dirs.items()}
    assert first["fsdp"] == pytest.approx(first["one"], rel=1e-4), first

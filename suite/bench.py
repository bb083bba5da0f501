"""`periln bench`: throughput, MFU, peak memory and step time of the suite's REAL training step.

Each placement is trained by `suite.train.train` itself: LitLM, its AdamW, the LR schedule,
gradient clipping, logging (MLflow through suite.tracking, or CSV) and the diagnostics callback at
its default interval, in a Lightning Trainer fit, on random tokens (default; vocabulary of
cl100k_base, so the LM head is the paper's size) or the synthetic corpus. Only validation and
checkpointing are moved out of the measured window (both happen between steps, not in one).

Timing: `warmup` optimizer steps (compilation, allocator warm-up) are not counted; the next `steps`
steps are timed between two device synchronisations, so the mean step time is the device's, not
the host's launch rate. Then the fit is stopped (no checkpoint is written).

    tokens/s per device = seq_len x batch_size x accumulate / mean step time
    MFU = flops_per_token x tokens/s per device / peak FLOP/s of one device

with flops_per_token and the device's peak from suite.cost (the PaLM convention; the peak from
Lightning's table of GPUs at the run's precision, an H200 at an H100 SXM's dense figure). A device
without a known peak (a CPU, an unlisted GPU) gets MFU "n/a" unless `--peak-flops` gives one.

`--overhead` runs every placement a second time "bare" (no logger output, no diagnostics, logging
interval beyond the run) and reports the step-time overhead of logging + diagnostics in percent.
`--find-max-batch` searches the largest batch that fits in device memory (one subprocess per try).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from models import ConfigError
from suite import cost
from suite.config import RunConfig, flatten, load_run_config
from suite.data import StepSampler, TokenData

CL100K_VOCAB = cost.KNOWN_VOCAB[cost.CL100K]  # the paper's tokenizer: 100352 rows once padded to 128
RESULT_KEYS = ("placement", "size", "seq_len", "batch_size", "accumulate", "devices", "steps",
               "step_time_s", "tokens_per_s_per_device", "tokens_per_s", "mfu", "flops_per_token",
               "peak_flops", "peak_memory_bytes", "peak_memory_kind", "loader_tokens_per_s",
               "precision", "compile", "strategy", "logger", "diagnostics", "status")


# ------------------------------------------------------------------------------------ the data

class _RandomTokenizer:
    def __init__(self, vocab_size: int) -> None:
        self.spec, self.vocab_size, self.eot_id = f"random:{vocab_size}", vocab_size, vocab_size - 1


class RandomTokenData(TokenData):
    """Uniform random tokens in the suite's own cache format, read by the real loader
    (PackedWindows, StepSampler, pinned DataLoader): only the token source differs."""

    def __init__(self, cfg: RunConfig, vocab_size: int, tokens: int = 1 << 23) -> None:
        super().__init__(cfg)
        self.tokenizer = _RandomTokenizer(vocab_size)
        t = cfg.train
        self.n_tokens = max(tokens, 4 * t.batch_size * t.devices * (t.seq_len + 1))

    def caches(self) -> tuple[Path, Path]:
        vocab = self.tokenizer.vocab_size
        final = Path(self.cfg.data.cache_dir) / "random" / f"v{vocab}-n{self.n_tokens}-s{self.cfg.seed}"
        if not (final / "meta.json").is_file():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
            dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
            rng = np.random.default_rng(self.cfg.seed)
            tokens = rng.integers(0, vocab, self.n_tokens, dtype=np.int64).astype(dtype)
            tokens.tofile(tmp / "shard_00000.bin")
            meta = dict(spec=self.tokenizer.spec, role="train", tokenizer=self.tokenizer.spec,
                        vocab_size=vocab, dtype=np.dtype(dtype).name, tokens=self.n_tokens,
                        documents=1, shards=[{"file": "shard_00000.bin", "tokens": self.n_tokens}])
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.rename(tmp, final)
            except OSError:  # built meanwhile by another process: identical
                shutil.rmtree(tmp, ignore_errors=True)
        return final, final

    @property
    def val_text_size(self) -> None:
        return None  # random ids are no text: no bits per byte


def loader_tokens_per_s(data: TokenData, batches: int = 50) -> float:
    """Tokens per second the training DataLoader delivers on its own (the run's loader settings:
    workers, pinned memory when a GPU is present, the same sampler): compare with the training
    rate to see that the loader cannot starve the device."""
    data.setup("fit")
    t = data.cfg.train
    sampler = StepSampler(len(data.train_set), t.batch_size, data.cfg.seed, start=0, total=batches + 1)
    it = iter(data._loader(data.train_set, sampler))
    next(it)  # worker start-up, first page-in of the shard
    start = time.perf_counter()
    tokens = sum(batch[:, 1:].numel() for batch in it)
    return tokens / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------- the timing

class _BenchDone(Exception):
    """Raised by StepTimer after the last measured step: ends the fit without a checkpoint."""


class StepTimer(Callback):
    """Times optimizer steps warmup+1 .. warmup+steps between two device synchronisations."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.t0: float | None = None
        self.seconds: float | None = None
        self.cpu0 = self.cpu_seconds = None  # process CPU time (all threads): robust on a busy CPU
        self.host_intervals: list[float] = []
        self._last: float | None = None
        self.rank = 0
        self.info: dict[str, Any] = {}

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_start(self, trainer, pl_module) -> None:
        self.rank = trainer.global_rank
        self.info = dict(precision=str(trainer.precision), strategy=type(trainer.strategy).__name__,
                         compile=getattr(pl_module, "_compiled_loss", None) is not None,
                         device=str(pl_module.device))
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # not an optimizer step yet
        if step == self.warmup:
            self._sync(pl_module.device)
            self.t0 = self._last = time.perf_counter()
            self.cpu0 = time.process_time()
        elif self.t0 is not None:
            now = time.perf_counter()
            self.host_intervals.append(now - self._last)
            self._last = now
            if step == self.warmup + self.steps:
                self._sync(pl_module.device)
                self.seconds = time.perf_counter() - self.t0
                self.cpu_seconds = time.process_time() - self.cpu0
                raise _BenchDone


class NullLogger(Logger):
    """Accepts and discards everything (a "bare" run still needs a logger for the LR monitor)."""

    name, version = "null", "0"

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def _logger(kind: str, cfg: RunConfig) -> tuple[Any, Any]:
    """(the logger train() gets, something to finalize after) for --logger mlflow|csv|none."""
    if kind == "none":
        return NullLogger(), None
    if kind == "csv":
        return None, None  # train()'s default: a CSVLogger in the run directory
    try:
        from suite import tracking  # the one module that imports mlflow
    except ImportError as err:
        raise ConfigError(f"--logger mlflow: cannot import mlflow ({err}); install it (the GPU machine "
                          "needs the carried wheels) or pass --logger csv") from None
    uri = tracking.store_uri(cfg.out_dir)
    tracking.prepare_store(uri)
    store = tracking.Store(uri)
    exp = store.experiment_id(cfg.sweep, tracking.artifact_root(uri, cfg.out_dir))
    # a new record each time: a benchmark never resumes a run
    run_id = tracking.open_run(store, exp, cfg.key, None, flatten(cfg.to_dict()),
                               {"sweep": cfg.sweep})
    store.set_status(run_id, "running")
    return store.logger(run_id), (store, run_id)


def bench_one(cfg: RunConfig, *, warmup: int, steps: int, data: str, vocab: int, logger: str,
              diagnostics: bool = True, peak_flops: float | None = None) -> dict[str, Any]:
    """Train `cfg` for warmup + steps optimizer steps and return the measurements (RESULT_KEYS)."""
    from suite.train import train

    t = cfg.train
    total = warmup + steps
    # the window holds training steps only: validation and checkpoints fall after it
    train_cfg = dataclasses.replace(t, max_steps=total + 1, val_every=total + 1, ckpt_every=total + 1,
                                    tokens=None, **({} if logger != "none" else {"log_every": total + 1}))
    changes: dict[str, Any] = {"train": train_cfg}
    diagnostics = diagnostics and cfg.diagnostics.enabled
    changes["diagnostics"] = dataclasses.replace(cfg.diagnostics, enabled=diagnostics)
    cfg = dataclasses.replace(cfg, **changes)
    dm = RandomTokenData(cfg, vocab) if data == "random" else TokenData(cfg)
    dm.prepare_data()
    loader_rate = loader_tokens_per_s(dm)
    timer = StepTimer(warmup, steps)
    lg, record = _logger(logger, cfg)
    status = "finished"
    try:
        train(cfg, [timer], logger=lg, data=dm)
        status = "stopped early (diverged?) before the measured window ended"
    except _BenchDone:
        pass
    except torch.OutOfMemoryError:
        status = "out of memory"
    finally:
        if record is not None:
            lg.finalize("success")
            record[0].set_status(record[1], "finished" if status == "finished" else "failed")

    vocab_size = dm.tokenizer.vocab_size
    mc, n_non_emb = cost.non_embedding_params(cfg, vocab_size)
    fpt = cost.flops_per_token(mc, t.seq_len, n_non_emb)
    devices = t.devices * t.num_nodes
    out: dict[str, Any] = dict(
        placement=cfg.placement, size=cfg.size, seq_len=t.seq_len, batch_size=t.batch_size,
        accumulate=t.accumulate, devices=devices, steps=steps, warmup=warmup, vocab_size=vocab_size,
        data=data, logger=logger, diagnostics=diagnostics, status=status, flops_per_token=fpt,
        non_embedding_params=n_non_emb, lm_head_params=mc.d_model * vocab_size,
        loader_tokens_per_s=loader_rate, rank=timer.rank, **timer.info)
    device = torch.device(timer.info.get("device", "cpu"))
    if device.type == "cuda":
        out.update(peak_memory_bytes=torch.cuda.max_memory_allocated(device),
                   peak_memory_reserved_bytes=torch.cuda.max_memory_reserved(device),
                   peak_memory_kind="torch.cuda.max_memory_allocated (device)")
    else:
        out.update(peak_memory_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                   peak_memory_kind="host peak RSS of this process (cumulative; no device memory)",
                   cpu_threads=torch.get_num_threads())
    peak, peak_text = cost.device_peak(device, out.get("precision", ""), peak_flops)
    out.update(device_name=cost.device_name(device), peak_flops=peak, peak_flops_source=peak_text)
    if timer.seconds is None:
        out.update(step_time_s=None, tokens_per_s_per_device=None, tokens_per_s=None, mfu=None)
        return out
    step_time = timer.seconds / steps
    per_device = t.seq_len * t.batch_size * t.accumulate / step_time
    out.update(step_time_s=step_time, tokens_per_s_per_device=per_device,
               tokens_per_s=cost.tokens_per_step(cfg) / step_time, mfu=cost.mfu(fpt, per_device, peak),
               host_step_time_median_s=statistics.median(timer.host_intervals),
               process_cpu_s_per_step=timer.cpu_seconds / steps,
               loader_headroom=loader_rate / per_device)
    return out


# ---------------------------------------------------------------------------- largest batch

def _trial(args: argparse.Namespace, placement: str, batch: int, out: Path) -> dict[str, Any]:
    """One short run in a fresh process (an out-of-memory leaves nothing behind)."""
    cmd = [sys.executable, "-m", "suite.cli", "bench", "--size", args.size, "--placements", placement,
           "--seq", str(args.seq), "--batch", str(batch), "--steps", "2", "--warmup", "2",
           "--data", args.data, "--vocab", str(args.vocab), "--logger", "none", "--json", str(out),
           "--cache-dir", str(args.cache_dir), *args.overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if out.is_file():
        result = json.loads(out.read_text())["results"][0]
        fits = result["status"] == "finished"
        return {"fits": fits, "peak_memory_bytes": result["peak_memory_bytes"],
                **({} if fits else {"error": result["status"]})}
    oom = "out of memory" in (proc.stderr + proc.stdout).lower()
    return {"fits": False, "error": "out of memory" if oom else proc.stderr.strip()[-2000:]}


def find_max_batch(args: argparse.Namespace, placement: str, work: Path) -> dict[str, Any]:
    """Double the batch from --batch until a try fails, then bisect: the largest batch that runs."""
    tries: dict[int, dict[str, Any]] = {}

    def fits(b: int) -> bool:
        tries[b] = _trial(args, placement, b, work / f"try-{placement}-{b}.json")
        print(f"  {placement} batch {b}: {'fits' if tries[b]['fits'] else tries[b].get('error', 'no')}",
              flush=True)
        return tries[b]["fits"]

    lo, hi = 0, args.batch
    while fits(hi):
        lo, hi = hi, hi * 2
        if hi > args.max_batch_limit:
            return {"placement": placement, "max_batch": lo, "capped_at": args.max_batch_limit,
                    "tries": tries}
    if lo == 0 and "out of memory" not in tries[hi].get("error", "out of memory"):
        return {"placement": placement, "max_batch": None, "error": tries[hi].get("error"),
                "tries": tries}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid == 0:
            break
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return {"placement": placement, "max_batch": lo or None, "tries": tries}


# --------------------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="400m", help="model size (periln sizes); default 400m")
    p.add_argument("--placements", nargs="+", default=["pre_ln", "peri_ln"], metavar="NAME",
                   help="placements to measure (default: pre_ln peri_ln)")
    p.add_argument("--seq", type=int, default=2048, help="sequence length (default 2048)")
    p.add_argument("--batch", type=int, default=16, help="sequences per device per step (default 16)")
    p.add_argument("--steps", type=int, default=100, help="measured optimizer steps (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="steps before timing starts (default 10)")
    p.add_argument("--data", choices=("random", "synthetic"), default="random",
                   help="random tokens (default) or the built-in synthetic corpus (byte tokenizer)")
    p.add_argument("--vocab", type=int, default=CL100K_VOCAB,
                   help=f"vocabulary of the random tokens (default {CL100K_VOCAB}, cl100k_base's)")
    p.add_argument("--logger", choices=("mlflow", "csv", "none"), default="mlflow",
                   help="what the run logs to: MLflow (suite.tracking, default), CSV, or nothing")
    p.add_argument("--peak-flops", type=float, default=None,
                   help="peak FLOP/s of one device for MFU (default: Lightning's figure for the GPU "
                        "and precision; none for a CPU)")
    p.add_argument("--overhead", action="store_true",
                   help="also run each placement bare (no logging, no diagnostics): overhead in %%")
    p.add_argument("--find-max-batch", action="store_true",
                   help="search the largest batch that fits, from --batch up (a subprocess per try)")
    p.add_argument("--max-batch-limit", type=int, default=1024, help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, default=None, help="write the results here (JSON)")
    p.add_argument("--out", type=Path, default=None,
                   help="where the runs go (default: a temporary directory, removed afterwards)")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/periln"),
                   help="data and compile caches (default .cache/periln)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="RunConfig overrides, e.g. train.compile=false train.precision=32 model.qk_norm=true")


def _fmt_bytes(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"


def _table(results: list[dict[str, Any]]) -> str:
    head = (f"{'placement':<16}{'tokens/s/device':>16}{'MFU':>8}{'peak mem':>12}{'step time':>12}"
            f"{'overhead':>10}{'loader x':>10}  status")
    lines = [head, "-" * len(head)]
    for r in results:
        tps, m, step = r.get("tokens_per_s_per_device"), r.get("mfu"), r.get("step_time_s")
        ov, lx = r.get("overhead_pct"), r.get("loader_headroom")
        cells = [f"{tps:,.0f}" if tps else "n/a", f"{m:.3f}" if m is not None else "n/a",
                 _fmt_bytes(r.get("peak_memory_bytes")), f"{step * 1e3:.1f} ms" if step else "n/a",
                 f"{ov:+.1f}%" if ov is not None else "-", f"{lx:.0f}x" if lx else "-"]
        lines.append(f"{r['placement']:<16}{cells[0]:>16}{cells[1]:>8}{cells[2]:>12}{cells[3]:>12}"
                     f"{cells[4]:>10}{cells[5]:>10}  {r['status']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    for name in ("seq", "batch", "steps", "warmup"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name}: must be >= 1; got {getattr(args, name)}")
    # `--placements a b key=value`: argparse hands the overrides to --placements
    args.overrides = [x for x in args.placements if "=" in x] + list(args.overrides)
    args.placements = [x for x in args.placements if "=" not in x]
    work = Path(tempfile.mkdtemp(prefix="periln-bench-")) if args.out is None else args.out
    try:
        results, max_batch = [], []
        for placement in args.placements:
            cfg = load_run_config(None, [
                f"placement={placement}", f"size={args.size}", f"train.seq_len={args.seq}",
                f"train.batch_size={args.batch}", "train.progress_bar=false", "sweep=bench",
                f"out_dir={work / 'runs'}", f"data.cache_dir={args.cache_dir}", *args.overrides])
            if args.find_max_batch:
                max_batch.append(find_max_batch(args, placement, work))
                continue
            common = dict(warmup=args.warmup, steps=args.steps, data=args.data, vocab=args.vocab,
                          peak_flops=args.peak_flops)
            r = bench_one(cfg, logger=args.logger, diagnostics=True, **common)
            if args.overhead:
                bare = bench_one(dataclasses.replace(cfg, sweep="bench-bare"), logger="none",
                                 diagnostics=False, **common)
                r["bare_step_time_s"] = bare["step_time_s"]
                if r["step_time_s"] and bare["step_time_s"]:
                    r["overhead_pct"] = 100.0 * (r["step_time_s"] / bare["step_time_s"] - 1.0)
            results.append(r)
        if results and results[0].get("rank", 0) != 0:
            return 0  # another DDP rank: rank 0 reports
        meta = dict(
            arguments={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                       if not k.startswith("_")},
            torch=torch.__version__, python=platform.python_version(), host=platform.node(),
            cuda=torch.version.cuda, time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            mfu_formula="(6 x (non-embedding params + d_model x vocab) + 12 x layers x d_model x seq)"
                        " x tokens/s per device / peak FLOP/s of one device")
        report = {"meta": meta, "results": results, "max_batch": max_batch}
        if results:
            r0 = results[0]
            print(f"periln bench: size {args.size}, seq {args.seq}, batch {args.batch}/device, "
                  f"{args.steps} steps timed after {args.warmup}; {r0.get('device_name')} "
                  f"({r0.get('device')}), precision {r0.get('precision')}, compile {r0.get('compile')}, "
                  f"{r0.get('strategy')}, logger {args.logger}, diagnostics on")
            print(f"MFU peak: {r0['peak_flops_source']}")
            print(f"peak memory: {r0['peak_memory_kind']}")
            print(_table(results))
            if any(r.get("loader_headroom") for r in results):
                print("loader x: tokens/s the data loader delivers alone / tokens/s trained")
        for m in max_batch:
            print(f"largest batch for {m['placement']} ({args.size}, seq {args.seq}): {m['max_batch']}"
                  + (f" (search capped at {m['capped_at']})" if "capped_at" in m else "")
                  + (f"; error: {m['error']}" if m.get("error") else ""))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))
            print(f"wrote {args.json}")
        return 0 if all(r["status"] == "finished" for r in results) else 1
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

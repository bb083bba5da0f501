"""Step-time overhead of the diagnostics callback at its default interval (CPU by default).

    python benchmarks/diagnostics_overhead.py [--steps 300] [--repeats 3] [--threads N] [key=value ...]

Trains the same tiny run with the callback on and off, alternating, each in a fresh run directory,
and prints two figures:
  1. A/B: mean step time over `--steps` steps (after 10 warm-up steps) with vs without the callback,
     the median over `--repeats` pairs, in wall time and in this process's CPU time (the CPU time
     is far less disturbed by other processes on a shared machine; wall time is as noisy as it).
  2. in-callback: the wall time spent inside the callback's hooks divided by the step time of the
     same runs; the callback's whole cost (LitLM's two stashes are attribute assignments), immune to
     noise from other processes.
The measured window holds `steps / diagnostics.every` probes and `steps / check_every` host reads,
so both figures are at the default rate. The issue's bound is 3%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import lightning as L
import torch

from suite.config import load_run_config
from suite.diagnostics import Diagnostics
from suite.train import train

WARMUP = 10


class StepClock(L.Callback):
    def __init__(self) -> None:
        self.times: dict[int, tuple[float, float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times[trainer.global_step] = (time.perf_counter(), time.process_time())


class TimedDiagnostics(Diagnostics):
    """Diagnostics that add up the wall time spent in their own hooks."""

    spent = 0.0

    def _timed(name):  # noqa: N805 - a decorator factory in the class body
        def hook(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return getattr(Diagnostics, name)(self, *args, **kwargs)
            finally:
                self.spent += time.perf_counter() - t
        return hook

    on_train_batch_end = _timed("on_train_batch_end")
    on_train_start = _timed("on_train_start")


def one_run(overrides: list[str], steps: int, enabled: bool, root: str) -> tuple[float, float, float]:
    """(mean wall step time, mean CPU step time, wall seconds inside the callback per step)."""
    cfg = load_run_config(None, overrides + [f"out_dir={root}/{'on' if enabled else 'off'}-{time.time_ns()}",
                                             f"train.max_steps={steps + WARMUP}",
                                             f"diagnostics.enabled={str(enabled).lower()}"])
    clock = StepClock()
    callbacks: list = [clock]
    diag = None
    if enabled:
        diag = TimedDiagnostics(cfg.diagnostics)
        callbacks.append(diag)
    spent_at_warmup = {}

    class Mark(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == WARMUP and diag is not None:
                spent_at_warmup["s"] = diag.spent

    callbacks.insert(1, Mark())
    train(cfg, callbacks=callbacks)
    t = clock.times
    wall = (t[steps + WARMUP][0] - t[WARMUP][0]) / steps
    cpu = (t[steps + WARMUP][1] - t[WARMUP][1]) / steps
    spent = (diag.spent - spent_at_warmup.get("s", 0.0)) / steps if diag else 0.0
    return wall, cpu, spent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("overrides", nargs="*", help="RunConfig key=value (default: tiny, synthetic)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        base = [f"data.cache_dir={root}/cache", "train.progress_bar=false",
                "train.val_every=100000", "train.ckpt_every=100000", *args.overrides]
        cfg = load_run_config(None, base)
        d = cfg.diagnostics
        print(f"run: {cfg.placement} {cfg.size}, seq {cfg.train.seq_len} x batch {cfg.train.batch_size}, "
              f"precision {cfg.train.precision}, {torch.get_num_threads()} thread(s); diagnostics every "
              f"{d.every} steps, host read every {d.check_every}; {args.steps} timed steps per run")
        one_run(base, 20, True, root)  # warm caches (token cache, imports, allocator)
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        inside = []
        for r in range(args.repeats):
            for enabled in ((True, False) if r % 2 == 0 else (False, True)):
                wall, cpu, spent = one_run(base, args.steps, enabled, root)
                runs[enabled].append((wall, cpu))
                if enabled:
                    inside.append(spent / wall)
                state = "on " if enabled else "off"
                print(f"  repeat {r + 1}: diagnostics {state} {wall * 1e3:7.2f} ms/step "
                      f"wall, {cpu * 1e3:7.2f} ms/step CPU" + (f"  (in callback {spent * 1e3:.3f} ms/step)"
                                                            if enabled else ""))
                sys.stdout.flush()
    figures = {}
    for i, what in enumerate(("wall", "CPU")):
        m_on = statistics.median(x[i] for x in runs[True])
        m_off = statistics.median(x[i] for x in runs[False])
        figures[what] = (m_on / m_off - 1) * 100
        print(f"A/B {what} step time: with {m_on * 1e3:.2f} ms, without {m_off * 1e3:.2f} ms -> overhead "
              f"{figures[what]:+.2f}% (median of {args.repeats} runs each)")
    hook = statistics.median(inside) * 100
    print(f"in-callback time: {hook:.2f}% of step time (median of {args.repeats} runs)")
    print(f"bound 3%: {'met' if max(hook, figures['CPU']) <= 3 else 'NOT met'} (in-callback and CPU A/B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

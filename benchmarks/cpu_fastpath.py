"""CPU measurements of the fast path with `periln bench` (the figures quoted in the README's
"Performance" section and the issue note): tokens/s with torch.compile on vs off, the step-time
overhead of logging + diagnostics, and the data loader's own throughput.

Every configuration runs in its own process, `--repeats` times, interleaved (A B A B ...), with
one compute thread (OMP_NUM_THREADS=1 unless set): on a shared CPU, oversubscribed OpenMP threads
make wall-clock step times swing by whole factors, so the process CPU time per step is reported
beside the wall-clock figures and the medians are compared.

    python benchmarks/cpu_fastpath.py --out results/bench/cpu_fastpath.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(args: list[str], env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "b.json"
        cmd = [sys.executable, "-m", "suite.cli", "bench", *args, "--json", str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())["results"][0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    p.add_argument("--placement", default="pre_ln")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache-dir", default=".cache/periln")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    common = ["--placements", a.placement, "--seq", str(a.seq), "--batch", str(a.batch),
              "--steps", str(a.steps), "--warmup", str(a.warmup), "--data", "synthetic",
              "--cache-dir", a.cache_dir]
    variants = {
        "eager": ["--logger", "csv", "train.compile=false"],
        "compiled": ["--logger", "csv", "train.compile=true"],
        "bare (no logger output, no diagnostics)": ["--logger", "none", "train.compile=false",
                                                    "diagnostics.enabled=false"],
        "MLflow + diagnostics": ["--logger", "mlflow", "train.compile=false"],
    }
    rows = []
    for size in a.sizes:
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        for _ in range(a.repeats):
            for name, extra in variants.items():
                runs[name].append(bench(["--size", size, *common, *extra], env))
        for name, rs in runs.items():
            row = dict(size=size, variant=name, repeats=len(rs),
                       tokens_per_s=statistics.median(r["tokens_per_s_per_device"] for r in rs),
                       step_ms=1e3 * statistics.median(r["step_time_s"] for r in rs),
                       cpu_ms_per_step=1e3 * statistics.median(r["process_cpu_s_per_step"] for r in rs),
                       loader_tokens_per_s=statistics.median(r["loader_tokens_per_s"] for r in rs),
                       all_step_ms=[round(1e3 * r["step_time_s"], 2) for r in rs],
                       all_cpu_ms=[round(1e3 * r["process_cpu_s_per_step"], 2) for r in rs])
            rows.append(row)
            print(f"{size:<6} {name:<42} {row['tokens_per_s']:>9,.0f} tok/s  step {row['step_ms']:7.1f} ms"
                  f"  cpu {row['cpu_ms_per_step']:7.1f} ms  (steps {row['all_step_ms']}, "
                  f"cpu {row['all_cpu_ms']})", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"threads": env["OMP_NUM_THREADS"], "args": vars(a) | {"out": str(a.out)},
                                     "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

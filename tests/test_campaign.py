"""The GPU campaign's CPU rehearsal (benchmarks/gpu_campaign.py --rehearse): the same stages,
packing and output limits as on the GPU, so that the first GPU call works."""

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rehearsal_runs_every_stage_within_the_output_limits(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_campaign.py"), "--out", str(out),
                           "--rehearse", "--bench-budget", "150", "--science-budget", "150"],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    # at most 8 files, flat, each under 16 MiB (what one device call returns)
    assert len(files) <= 8 and all(p.is_file() and p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    assert {"summary.txt", "bench.json", "results.tar.gz", "tables.md", "claims.csv",
            "runs.csv"} <= set(files)
    summary = (out / "summary.txt").read_text()
    for step in ("pytest_gpu", "bench_400m", "bench_reference_shape", "mini10_submit", "mini10_tables",
                 "bench: done", "science: done", "output:"):
        assert step in summary, step
    bench = json.loads((out / "bench.json").read_text())
    measured = [r for r in bench if r.get("step") == "bench_400m"]
    assert {r["placement"] for r in measured} == {"pre_ln", "peri_ln"}
    assert all(r["tokens_per_s"] > 0 and r.get("overhead_pct") is not None for r in measured)
    runs = (out / "runs.csv").read_text().splitlines()
    assert len(runs) == 1 + 4  # seed 0 at LR 1e-3: pre, peri, post (16 layers), post (4 layers)
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("mini10_submit.log") for n in names)
    assert any(n.startswith("mini10/figures/") for n in names)

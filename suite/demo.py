"""`periln demo`: the whole pipeline on one machine, no GPU, no internet.

sweeps/smoke.yaml (three placements x two LRs x two seeds, tiny model, synthetic corpus) through the
local executor into the embedded MLflow store (sqlite), each finished run scored with lm-eval on
offline benchmarks in the five tasks' Hugging Face schemas built from the synthetic corpus's facts
(suite/synthetic_tasks.py), then the tables and figures from the records (suite/tables.py,
suite/figures.py). Running it again skips the finished cells and rebuilds the tables.

Everything lands under one folder (default results/demo/):

    benchmarks/           the offline task files (ARC-Easy, HellaSwag, PIQA, SIQA, Winogrande)
    runs/mlflow.db        the MLflow store (runs/mlartifacts/: configs, eval provenance)
    runs/smoke/<key>/     each run's directory (checkpoints, config.yaml, result.json)
    runs.csv, curves.csv  the records as tidy CSV
    tables.md, tables.tex, table1.csv, lr_sensitivity.csv, paper_comparison.csv, claims.csv
    figures/*.png, *.pdf
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evals.tasks import PAPER_TASKS
from models import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "sweeps" / "smoke.yaml"


def run_demo(out: str | Path = "results/demo", sweep_file: str | Path = SMOKE,
             overrides: Sequence[str] = (), only: Sequence[str] = (), eval_limit: int | None = 100,
             benchmark_items: int = 200, parallel: int | None = None,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo; returns {"seconds", "files", "tables", "errors"}."""
    from suite import launch, tables, tracking
    from suite.config import parse_overrides, read_yaml
    from suite.sweep import sweep_from_dict
    from suite.synthetic_tasks import write_synthetic_benchmarks

    start = time.perf_counter()
    out = Path(out)
    bench = (out / "benchmarks").resolve()
    write_synthetic_benchmarks(bench, n=benchmark_items, tasks=PAPER_TASKS)

    data = dict(read_yaml(sweep_file, mapping=True))
    if "eval" in data and data["eval"]:
        raise ConfigError(f"{sweep_file}: eval: the demo sets its own (offline benchmarks); remove it")
    data["eval"] = {"tasks": list(PAPER_TASKS), "limit": eval_limit, "data_dir": str(bench)}
    extra = parse_overrides([f"out_dir={out / 'runs'}", *overrides])
    sweep = sweep_from_dict(data, str(sweep_file), extra)
    cells = sweep.select(list(only))
    uri = tracking.store_uri(sweep.out_dir)
    say(f"demo: sweep {sweep.name!r} ({sweep_file}): {len(cells)} cells, "
        f"{cells[0].train.max_steps} steps each, scored on {', '.join(PAPER_TASKS)} "
        f"({eval_limit or 'all'} items each, offline); records in {uri}")

    # the local executor says cells done / running / left and an ETA while it waits (launch.Progress)
    sub = launch.submit(sweep, "local", only=list(only), parallel=parallel,
                        progress=lambda line: say(f"[{launch.clock(time.perf_counter() - start)}] {line}"))
    for key, why in sub.plan.skip.items():
        say(f"skipped {key}: {why}")

    files = tables.regenerate(out, sweep.name, uri)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "files": files, "errors": dict(sub.errors), "out": out, "uri": uri,
            "sweep": sweep}


def summary(result: dict[str, Any]) -> str:
    """What the demo made and where, how to open the MLflow UI, Table 1 and the claims' verdicts."""
    out: Path = result["out"]
    md = (out / "tables.md").read_text()
    table1 = md.split("## Learning-rate sensitivity")[0].split("### ", 1)[-1]
    claims = []
    import csv

    from suite.stats import UNTESTABLE

    with (out / "claims.csv").open(newline="") as fh:
        for row in csv.DictReader(line for line in fh if not line.startswith("#")):
            if row["group"] == "overall":
                why = f" ({row['reason']})" if row["verdict"] == UNTESTABLE and row["reason"] else ""
                claims.append(f"  {row['verdict']:<18} {row['claim']}{why}")
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    runs_dir = Path(result["sweep"].out_dir)
    lines = [
        "", "Table 1 (" + table1.strip().split("\n", 1)[0] + "):", table1.strip().split("\n", 1)[-1].strip(),
        "", "Claims of the paper: a WIRING CHECK on a 4-layer model, 2 seeds and synthetic benchmarks, not a",
        "test of the paper (claims whose preconditions fail say so; see docs/paper.md):", *claims, "",
        f"Results in {out}/:",
        "  tables.md, tables.tex        Table 1, LR sensitivity, side by side with the paper, claims",
        "  table1.csv, lr_sensitivity.csv, paper_comparison.csv, claims.csv",
        "  runs.csv, curves.csv         the records as tidy CSV (rebuild: periln tables --from-csv "
        f"{out}/runs.csv)",
        f"  figures/                     {', '.join(figures)} (and .pdf)",
        f"  {runs_dir}/                  MLflow store (mlflow.db) and run directories",
        "", "MLflow UI (then open http://127.0.0.1:5000):",
        f"  periln mlflow-ui --out {runs_dir}",
    ]
    if result["errors"]:
        lines += ["", f"{len(result['errors'])} cell(s) failed:"]
        lines += [f"  {k}: {v}" for k, v in sorted(result["errors"].items())]
    from suite.launch import clock

    lines += ["", f"demo finished in {clock(result['seconds'])} (m:ss)"]
    return "\n".join(lines)

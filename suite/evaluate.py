"""Scoring a training checkpoint (evaluate_checkpoint), and the `periln eval` and `periln data`
verbs (registered in suite/cli.py). Import-light: lm_eval and the checkpoint are loaded only when a
verb runs. The scoring itself is evals.run.evaluate (a model and a tokenizer in, numbers out)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from evals.tasks import ALL_TASKS, AVERAGE_KEY, AVERAGE_METRIC, PAPER_TASKS, TASKS, resolve_tasks
from suite.config import at_least

FILES_HELP = ", ".join(f"{TASKS[t].file_stem()}.jsonl.gz" for t in ALL_TASKS)
RESULT_FILE = "eval.json"


def evaluate_checkpoint(ckpt_or_run_dir: str | Path, tasks: str | list[str] | tuple[str, ...] = "paper",
                        limit: int | float | None = None, data_dir: str | Path | None = None,
                        batch_size: int = 32, *, num_fewshot: int = 0, device: str | None = None,
                        dtype: str = "float32", cache_dir: str | Path | None = None,
                        out_dir: str | Path = "runs", sweep: str | None = None) -> dict[str, Any]:
    """Load a checkpoint (a .ckpt file, a run directory, or a run key under out_dir) and score it.
    Returns {"metrics": {"eval/<task>/<metric>": value, ..., "eval/paper_avg": ...},
             "meta": {task versions, lm-eval version, num_fewshot, limit, requests/s, checkpoint, ...}}."""
    from evals import data as task_data
    from evals.adapter import PerilnLM
    from evals.run import evaluate
    from suite.checkpoint import load_checkpoint, resolve_checkpoint
    from suite.synthetic_tasks import benchmark_provenance

    names = resolve_tasks(tasks)  # bad task names fail before the checkpoint is read
    if data_dir is not None:
        task_data.locate(data_dir, names)
    loaded = load_checkpoint(resolve_checkpoint(ckpt_or_run_dir, out_dir, sweep))
    lm = PerilnLM(model=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=device,
                  dtype=dtype)
    lm.checkpoint = str(loaded.checkpoint)
    result = evaluate(lm, names, limit=limit, data_dir=data_dir, num_fewshot=num_fewshot, cache_dir=cache_dir)
    result["meta"].update(checkpoint=str(loaded.checkpoint), run_dir=str(loaded.run_dir), key=loaded.key,
                          step=loaded.step, benchmark_data=benchmark_provenance(data_dir))
    return result


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """The result as JSON (atomically); by default <run_dir>/eval.json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction below 1; got {text!r}") from None
    return int(value) if value >= 1 and value == int(value) else value


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_KEY|RUN_DIR|CHECKPOINT",
                   help="a .ckpt file, a run directory (uses checkpoints/last.ckpt), or a run key "
                        "looked up under <out-dir>/<sweep>/<key>")
    p.add_argument("--tasks", default="paper",
                   help=f"paper ({','.join(PAPER_TASKS)}), all (+arc_challenge), or comma-separated "
                        "task names (default paper)")
    p.add_argument("--limit", type=_limit, default=None,
                   help="the first N items of each task (a fraction below 1: that share); default all")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"local task files (offline; hub access is switched off), named {FILES_HELP} "
                        "(.jsonl, .json or .parquet also read); `periln data fetch-benchmarks DIR` saves "
                        "them. Without it, lm-eval loads each task's dataset from the Hugging Face hub")
    p.add_argument("--batch-size", type=at_least(1), default=32,
                   help="requests per forward pass (default 32)")
    p.add_argument("--num-fewshot", type=at_least(0), default=0,
                   help="few-shot examples (default 0: zero-shot)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="autocast precision of the forward pass (default float32)")
    p.add_argument("--out-dir", default="runs", help="where run keys are looked up (default runs)")
    p.add_argument("--sweep", help="the sweep of a run key found in several")
    p.add_argument("--output", metavar="JSON", help="where the scores go (default <run_dir>/eval.json)")
    p.add_argument("--cache-dir", help="datasets' cache for the task files (default: its own, HF_HOME)")
    p.add_argument("--verbose", action="store_true", help="lm-eval's own log lines too")


def run_eval(args: argparse.Namespace) -> int:
    from suite.checkpoint import resolve_checkpoint, run_dir_of

    _logging(args.verbose)
    ckpt = resolve_checkpoint(args.target, args.out_dir, args.sweep)
    result = evaluate_checkpoint(ckpt, args.tasks, limit=args.limit, data_dir=args.data_dir,
                                 batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                                 device=args.device, dtype=args.dtype, cache_dir=args.cache_dir)
    metrics, meta = result["metrics"], result["meta"]
    path = write_result(result, args.output or run_dir_of(ckpt) / RESULT_FILE)
    print(f"{meta.get('key') or ckpt} (step {meta.get('step')}), {meta['num_fewshot']}-shot, "
          f"limit {meta['limit'] or 'none'}")
    print(f"{'task':<15}{'acc':>8}{'± se':>8}{'acc_norm':>10}{'± se':>8}{'items':>7}")
    for task, info in meta["tasks"].items():
        cells = []
        for metric in ("acc", "acc_norm"):
            value = metrics.get(f"eval/{task}/{metric}")
            se = metrics.get(f"eval/{task}/{metric}_stderr")
            cells.append(f"{value:>8.4f}" if value is not None else f"{'-':>8}")
            cells.append(f"{se:>8.4f}" if se is not None else f"{'-':>8}")
        print(f"{task:<15}{cells[0]}{cells[1]}  {cells[2]}{cells[3]}{info['samples'] or 0:>7}")
    if AVERAGE_KEY in metrics:
        print(f"5-task average ({', '.join(f'{t} {AVERAGE_METRIC[t]}' for t in PAPER_TASKS)}): "
              f"{metrics[AVERAGE_KEY]:.4f}")
    print(f"{meta['requests']} requests, {meta['requests_per_s'] or 0:.1f} requests/s while scoring, "
          f"{meta['seconds']:.1f} s in all; wrote {path}")
    return 0


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("fetch-benchmarks", "synthetic-benchmarks"),
                   help="fetch-benchmarks: save the tasks' evaluation sets from the Hugging Face hub "
                        "(needs internet); synthetic-benchmarks: write offline sets in the same "
                        "schemas built from the synthetic corpus's facts")
    p.add_argument("dir", metavar="DIR", help=f"the folder (files: {FILES_HELP})")
    p.add_argument("--tasks", default="all", help="paper, all (default) or comma-separated task names")
    p.add_argument("--fewshot-splits", action="store_true",
                   help="fetch-benchmarks: also the train splits (and ARC's validation), for few-shot")
    p.add_argument("-n", type=int, default=200, help="synthetic-benchmarks: items per task (default 200)")
    p.add_argument("--seed", type=int, default=0, help="synthetic-benchmarks: item seed (default 0)")


def run_data(args: argparse.Namespace) -> int:
    tasks = resolve_tasks(args.tasks)
    if args.action == "fetch-benchmarks":
        from evals.data import fetch_benchmarks

        paths = fetch_benchmarks(args.dir, tasks, fewshot_splits=args.fewshot_splits)
    else:
        from suite.synthetic_tasks import write_synthetic_benchmarks

        paths = write_synthetic_benchmarks(args.dir, n=args.n, seed=args.seed, tasks=tasks)
    print(f"{len(paths)} files in {args.dir}; use: periln eval RUN --data-dir {args.dir}")
    return 0


def _logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    ours = logging.getLogger("evals")
    ours.setLevel(logging.INFO)
    if not ours.handlers:
        ours.addHandler(handler)
    if not verbose:  # lm-eval's per-task INFO lines and warnings about its own defaults
        for name in ("lm_eval", "lm-eval"):
            logging.getLogger(name).setLevel(logging.ERROR)

"""Scoring a training checkpoint or a Llama-family transformers folder (evaluate_checkpoint), and
the `periln eval` and `periln data` verbs (registered in suite/cli.py). Import-light: lm_eval,
transformers and the checkpoint are loaded only when a verb runs. The scoring itself is
evals.run.evaluate (a model and a tokenizer in, numbers out)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evals.tasks import ALL_TASKS, AVERAGE_KEY, AVERAGE_METRIC, PAPER_TASKS, TASKS, resolve_tasks
from models import ConfigError
from suite.checkpoint import EXTERNAL, HF_KEY_PREFIX, LAST, Loaded, load_checkpoint, resolve_checkpoint
from suite.config import at_least

FILES_HELP = ", ".join(f"{TASKS[t].file_stem()}.jsonl.gz" for t in ALL_TASKS)
RESULT_FILE = "eval.json"


# why the end-of-text prefix has the value it has (recorded in eval.json meta)
PREFIX_RULES = {
    "given": "set by --prefix-eot/--no-prefix-eot or the sweep's eval.prefix_eot",
    True: "default for a suite-trained model: its training documents are joined by the end-of-text "
          "token (suite/data.py), so a text starts after one",
    False: "default for an imported model: off, as lm-eval's HF model scores it",
}


def evaluate_checkpoint(target: str | Path, tasks: str | list[str] | tuple[str, ...] = "paper",
                        limit: int | float | None = None, data_dir: str | Path | None = None,
                        batch_size: int = 32, *, num_fewshot: int = 0, device: str | None = None,
                        dtype: str = "float32", cache_dir: str | Path | None = None,
                        out_dir: str | Path = "runs", sweep: str | None = None,
                        prefix_eot: bool | None = None) -> dict[str, Any]:
    """Load a checkpoint (a .ckpt file, a run directory, a run key under out_dir, or a Llama-family
    transformers folder) and score it. prefix_eot: the adapter puts the end-of-text token before
    every context (None: what the model was trained with, see PREFIX_RULES).
    Returns {"metrics": {"eval/<task>/<metric>": value, ..., "eval/paper_avg": ...},
             "meta": {task versions, lm-eval version, num_fewshot, limit, requests/s, checkpoint, ...}}."""
    from evals import data as task_data
    from evals.adapter import PerilnLM
    from evals.run import evaluate
    from suite.synthetic_tasks import benchmark_provenance

    names = resolve_tasks(tasks)  # bad task names fail before the checkpoint is read
    if data_dir is not None:
        task_data.locate(data_dir, names)
    loaded = load_target(target, out_dir, sweep)
    prefix = loaded.prefix_eot if prefix_eot is None else bool(prefix_eot)
    lm = PerilnLM(model=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size, device=device,
                  dtype=dtype, prefix_eot=prefix)
    lm.checkpoint = str(loaded.checkpoint or loaded.hf_folder)
    result = evaluate(lm, names, limit=limit, data_dir=data_dir, num_fewshot=num_fewshot, cache_dir=cache_dir)
    result["meta"].update(
        checkpoint=str(loaded.checkpoint) if loaded.checkpoint else None,
        hf_folder=str(loaded.hf_folder) if loaded.hf_folder else None, run_dir=str(loaded.run_dir),
        key=loaded.key, size=loaded.size, step=loaded.step, benchmark_data=benchmark_provenance(data_dir),
        prefix_eot=prefix, prefix_eot_rule=PREFIX_RULES["given" if prefix_eot is not None else prefix])
    return result


def is_hf_folder(target: str | Path) -> bool:
    """A folder with a config.json that is not a run directory: a transformers model folder."""
    p = Path(target).expanduser()
    return p.is_dir() and (p / "config.json").is_file() and not (p / LAST).is_file()


def load_hf_folder(folder: str | Path, out_dir: str | Path = "runs") -> Loaded:
    """A Llama-family transformers folder as the suite's model (suite.hf.load_hf_llama) with the
    folder's own tokenizer files; its run key is hf-<folder name>, its run directory
    <out_dir>/external/hf-<folder name> (nothing is written into the model folder)."""
    from suite.hf import load_hf_llama
    from suite.tokenizer import load_tokenizer

    d = Path(folder).expanduser().resolve()
    model, cfg = load_hf_llama(d)
    tokenizer = load_tokenizer(f"files:{d}")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ConfigError(f"{d}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                          f"{cfg.vocab_size}; the folder's tokenizer files do not belong to its model")
    key = f"{HF_KEY_PREFIX}{d.name}"
    return Loaded(model, tokenizer, None, Path(out_dir).expanduser() / EXTERNAL / key, key,
                  None, size=EXTERNAL, prefix_eot=False, hf_folder=d)


def load_target(target: str | Path, out_dir: str | Path = "runs", sweep: str | None = None) -> Loaded:
    """What `periln eval` is given: a transformers folder, or a checkpoint / run directory / run key."""
    if is_hf_folder(target):
        return load_hf_folder(target, out_dir)
    return load_checkpoint(resolve_checkpoint(target, out_dir, sweep))


def eval_json(result: dict[str, Any]) -> str:
    """The one eval.json format, {"metrics": {...}, "meta": {...}}: the file `periln eval` and a
    sweep's scoring write into the run directory, and the MLflow artifact of a sweep's run."""
    return json.dumps({"metrics": result["metrics"], "meta": result["meta"]}, indent=1, default=str) + "\n"


def write_result(result: dict[str, Any], path: str | Path,
                 log_text: Callable[[str, str], None] | None = None) -> Path:
    """The result as eval.json at `path` (atomically); log_text(text, "eval.json"), when given,
    records the same text elsewhere (the MLflow artifact)."""
    text = eval_json(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    if log_text is not None:
        log_text(text, RESULT_FILE)
    return path


def _limit(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction below 1; got {text!r}") from None
    return int(value) if value >= 1 and value == int(value) else value


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_KEY|RUN_DIR|CHECKPOINT|HF_FOLDER",
                   help="a .ckpt file, a run directory (uses checkpoints/last.ckpt), a run key "
                        "looked up under <out-dir>/<sweep>/<key>, or a local transformers folder of a "
                        "Llama-family model (llama, mistral, qwen3, olmo2; run key hf-<folder name>)")
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
    p.add_argument("--prefix-eot", action=argparse.BooleanOptionalAction, default=None,
                   help="put the end-of-text token before every context (default: what the model was "
                        "trained with: on for suite-trained runs, whose documents are joined by it; off "
                        "for a transformers folder, as lm-eval's HF model)")
    p.add_argument("--out-dir", default="runs", help="where run keys are looked up, and where a "
                   "transformers folder's eval.json goes (<out-dir>/external/hf-<name>/; default runs)")
    p.add_argument("--sweep", help="the sweep of a run key found in several")
    p.add_argument("--output", metavar="JSON", help="where the scores go (default <run_dir>/eval.json)")
    p.add_argument("--cache-dir", help="datasets' cache for the task files (default: its own, HF_HOME)")
    p.add_argument("--verbose", action="store_true", help="lm-eval's own log lines too")


def run_eval(args: argparse.Namespace) -> int:
    _logging(args.verbose)
    result = evaluate_checkpoint(args.target, args.tasks, limit=args.limit, data_dir=args.data_dir,
                                 batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                                 device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                                 out_dir=args.out_dir, sweep=args.sweep, prefix_eot=args.prefix_eot)
    metrics, meta = result["metrics"], result["meta"]
    path = write_result(result, args.output or Path(meta["run_dir"]) / RESULT_FILE)
    at = f"step {meta['step']}" if meta["step"] is not None else f"size {meta['size']}"
    print(f"{meta['key'] or meta['checkpoint']} ({at}), {meta['num_fewshot']}-shot, "
          f"limit {meta['limit'] or 'none'}, end-of-text prefix {'on' if meta['prefix_eot'] else 'off'}")
    print(f"{'task':<15}{'acc':>8}{'± se':>8}{'acc_norm':>10}{'± se':>8}{'items':>7}{'bpb':>8}")
    for task, info in meta["tasks"].items():
        cells = []
        for metric in ("acc", "acc_norm"):
            value = metrics.get(f"eval/{task}/{metric}")
            se = metrics.get(f"eval/{task}/{metric}_stderr")
            cells.append(f"{value:>8.4f}" if value is not None else f"{'-':>8}")
            cells.append(f"{se:>8.4f}" if se is not None else f"{'-':>8}")
        bpb = metrics.get(f"eval/{task}/bpb")
        print(f"{task:<15}{cells[0]}{cells[1]}  {cells[2]}{cells[3]}{info['samples'] or 0:>7}"
              + (f"{bpb:>8.4f}" if bpb is not None else f"{'-':>8}"))
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

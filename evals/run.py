"""Scoring: lm-eval over the suite's tasks, flattened into `eval/<task>/<metric>` numbers.

`evaluate(lm, ...)` runs lm-eval's `simple_evaluate` in process with the built-in task configs
(pointed at local files when a data directory is given) and returns {"metrics": {flat numbers},
"meta": {provenance}}: the shape the tracking and sweep code log (metrics as MLflow metrics, both as
the eval.json artifact). Beside lm-eval's own metrics, `eval/<task>/bpb`: bits per UTF-8 byte of the
correct continuation (-log p(continuation | context) / (bytes * ln 2), averaged over the items; ours),
from lm-eval's per-item log-likelihoods. Scoring a training checkpoint (which evals does not read) is
suite.evaluate.evaluate_checkpoint.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from evals import data as task_data
from evals.tasks import (
    AVERAGE_KEY,
    AVERAGE_METRIC,
    PAPER_TASKS,
    TASKS,
    metric_key,
    paper_average,
    resolve_tasks,
)
from models import ConfigError

log = logging.getLogger("evals")
BPB = "bpb"
BPB_NOTE = ("ours: bits per UTF-8 byte of the correct continuation, -log p(continuation | context) / "
            "(bytes * ln 2), averaged over the items")

def evaluate(lm, tasks: str | list[str] | tuple[str, ...] = "paper", *, limit: int | float | None = None,
             data_dir: str | Path | None = None, num_fewshot: int = 0, cache_dir: str | Path | None = None,
             bootstrap_iters: int = 1000, seed: int = 1234) -> dict[str, Any]:
    """Score an lm-eval LM (e.g. evals.adapter.PerilnLM) on the tasks.

    tasks: "paper", "all", or task names (evals.tasks.TASKS). limit: the first N documents of each
    task (a float < 1: that fraction), None for all. data_dir: local files (evals.data) instead of
    the hub; hub access is then switched off. cache_dir: where `datasets` caches the files it reads
    (default: its own, under HF_HOME)."""
    names = resolve_tasks(tasks)
    if limit is not None and not (limit > 0):
        raise ConfigError(f"limit must be > 0 (a count, or a fraction below 1); got {limit}")
    if num_fewshot < 0:
        raise ConfigError(f"num_fewshot must be >= 0; got {num_fewshot}")
    files = None
    if data_dir is not None:
        files = task_data.locate(data_dir, names)
        if num_fewshot and any(set(files[n]) == {TASKS[n].split} for n in names):
            log.warning("few-shot examples come from the scored split itself where no <task>_train file "
                        "is in %s", data_dir)
    import datasets  # noqa: F401  (loaded before offline() so that it can switch it and back)
    import lm_eval
    from lm_eval.tasks import TaskManager

    before = dict(getattr(lm, "stats", {}))
    start = time.perf_counter()
    with task_data.offline() if files is not None else nullcontext(), \
            tempfile.TemporaryDirectory(prefix="periln-tasks-") as scratch:
        include = task_data.builtin_task_dirs(names)
        if files is not None:
            task_data.write_group(Path(scratch), files, cache_dir)
            include.append(Path(scratch))
        manager = TaskManager(include_path=[str(p) for p in include], include_defaults=False)
        try:
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[task_data.GROUP] if files is not None else list(names),
                num_fewshot=num_fewshot, limit=limit, task_manager=manager, bootstrap_iters=bootstrap_iters,
                log_samples=True,  # the per-item log-likelihoods: bpb
                random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                fewshot_random_seed=seed)
        except Exception as err:
            # the hub out of reach, or a data file that passed the first-record check but not
            # `datasets`' full read: user-side problems, one line each
            origin = type(err).__module__.split(".")[0]
            if origin not in ("datasets", "huggingface_hub") and not isinstance(err, ConnectionError):
                raise
            first = str(err).splitlines()[0][:300] if str(err) else ""
            hint = ("" if files is not None else "; offline, give --data-dir DIR with the task files "
                    "(`periln data fetch-benchmarks DIR` where the hub is reachable)")
            raise ConfigError(f"task data: {type(err).__name__}: {first}{hint}") from None
    seconds = time.perf_counter() - start
    return _flatten(out, names, lm, before, seconds, limit=limit, num_fewshot=num_fewshot, data_dir=data_dir,
                    files=files)


def gold_choice(sample: dict[str, Any]) -> int:
    """The index of a multiple-choice item's correct request, as lm-eval decides it: the target
    (ARC, HellaSwag, PIQA, SIQA), or for Winogrande, whose requests share the continuation after
    each option's context, the option doc["answer"] names."""
    target = sample["target"]
    if isinstance(target, int):
        return target
    answer = str(sample["doc"].get("answer", ""))
    if answer in ("1", "2"):
        return int(answer) - 1
    raise RuntimeError(f"cannot tell the correct choice of an item (target {target!r})")


def continuation_bpb(samples: list[dict[str, Any]]) -> float | None:
    """Mean over items of -log p(correct continuation | context) / (its UTF-8 bytes * ln 2)."""
    values = []
    for sample in samples:
        gold = gold_choice(sample)
        continuation = sample["arguments"][gold][1]
        logprob = sample["filtered_resps"][gold][0]
        values.append(-float(logprob) / (len(continuation.encode("utf-8")) * math.log(2)))
    return sum(values) / len(values) if values else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _flatten(out: dict[str, Any], names: tuple[str, ...], lm, before: dict, seconds: float,
             **meta_in: Any) -> dict:
    import lm_eval

    metrics: dict[str, float] = {}
    task_meta: dict[str, Any] = {}
    for name in names:
        res = out["results"].get(name)
        if res is None:
            raise RuntimeError(f"lm-eval returned no result for {name} (got {', '.join(out['results'])})")
        for metric in TASKS[name].metrics:
            for key in (metric, f"{metric}_stderr"):
                value = _number(res.get(f"{key},none"))
                if value is not None:
                    metrics[metric_key(name, key)] = value
        bpb = continuation_bpb(out.get("samples", {}).get(name, []))
        if bpb is not None:
            metrics[metric_key(name, BPB)] = bpb
        files = meta_in["files"]
        task_meta[name] = {
            "version": out.get("versions", {}).get(name),
            "num_fewshot": out.get("n-shot", {}).get(name),
            "samples": out.get("n-samples", {}).get(name, {}).get("effective"),
            "samples_total": out.get("n-samples", {}).get(name, {}).get("original"),
            "split": TASKS[name].split,
            "data": str(files[name][TASKS[name].split]) if files else f"hub:{TASKS[name].hub}",
        }
    average = paper_average(metrics)
    if average is not None:
        metrics[AVERAGE_KEY] = average
    stats = getattr(lm, "stats", {})
    requests = stats.get("requests", 0) - before.get("requests", 0)
    forward = stats.get("seconds", 0.0) - before.get("seconds", 0.0)
    limit = meta_in["limit"]
    meta = {
        "tasks": task_meta,
        "lm_eval_version": lm_eval.__version__,
        "num_fewshot": meta_in["num_fewshot"],
        "limit": limit,
        "data_dir": str(meta_in["data_dir"]) if meta_in["data_dir"] is not None else None,
        "average": {"key": AVERAGE_KEY, "tasks": list(PAPER_TASKS),
                    "metric": {t: AVERAGE_METRIC[t] for t in PAPER_TASKS},
                    "note": "our choice: acc_norm where lm-eval reports it, else acc (the paper is silent)"},
        "bpb": BPB_NOTE,
        "batch_size": getattr(lm, "batch_size", None),
        "requests": requests,
        "seconds": round(seconds, 3),
        "scoring_seconds": round(forward, 3),
        "requests_per_s": round(requests / forward, 2) if forward > 0 else None,
    }
    if hasattr(lm, "get_model_info"):
        meta["model"] = lm.get_model_info()
    log.info("%d requests in %.1f s (%.1f requests/s while scoring), %.1f s in all", requests, forward,
             meta["requests_per_s"] or 0.0, seconds)
    return {"metrics": metrics, "meta": meta}

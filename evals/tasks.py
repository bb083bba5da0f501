"""The downstream task set, defined once: names, data files, schemas, metrics, the paper average.

Plain data (no lm_eval import), so the tables code can use it cheaply.

The paper (docs/paper.md section 3) scores ARC-Easy, HellaSwag, PIQA, SIQA and Winogrande with
lm-evaluation-harness and says neither the shot count nor which accuracy it reports. OUR choices:
zero-shot by default; both acc and acc_norm are recorded wherever lm-eval reports them; the 5-task
average (`eval/paper_avg`) takes acc_norm where lm-eval reports it (ARC, HellaSwag, PIQA) and acc
where it is the only metric (SIQA, Winogrande) -- see AVERAGE_METRIC.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

from models import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the built-in lm-eval task
    folder: str  # its folder under lm_eval/tasks/
    hub: str  # the Hugging Face dataset lm-eval loads (path, or path:config)
    split: str  # the split lm-eval scores
    stem: str  # local files are <stem>_<split>.jsonl.gz (or .jsonl, .parquet)
    fields: tuple[str, ...]  # top-level fields of a record (the HF schema) the task reads
    metrics: tuple[str, ...]  # what lm-eval reports (each with a <metric>_stderr)

    def file_stem(self, split: str | None = None) -> str:
        return f"{self.stem}_{split or self.split}"


_ARC_FIELDS = ("question", "choices", "answerKey")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("arc_easy", "arc", "allenai/ai2_arc:ARC-Easy", "test", "arc_easy", _ARC_FIELDS,
             ("acc", "acc_norm")),
    TaskSpec("arc_challenge", "arc", "allenai/ai2_arc:ARC-Challenge", "test", "arc_challenge",
             _ARC_FIELDS, ("acc", "acc_norm")),
    TaskSpec("hellaswag", "hellaswag", "Rowan/hellaswag", "validation", "hellaswag",
             ("activity_label", "ctx_a", "ctx_b", "endings", "label"), ("acc", "acc_norm")),
    TaskSpec("piqa", "piqa", "baber/piqa", "validation", "piqa", ("goal", "sol1", "sol2", "label"),
             ("acc", "acc_norm")),
    TaskSpec("social_iqa", "siqa", "lighteval/siqa", "validation", "social_iqa",
             ("context", "question", "answerA", "answerB", "answerC", "label"), ("acc",)),
    TaskSpec("winogrande", "winogrande", "allenai/winogrande:winogrande_xl", "validation",
             "winogrande_xl", ("sentence", "option1", "option2", "answer"), ("acc",)),
)}

PAPER_TASKS: tuple[str, ...] = ("arc_easy", "hellaswag", "piqa", "social_iqa", "winogrande")
ALL_TASKS: tuple[str, ...] = (*PAPER_TASKS, "arc_challenge")

# OUR choice (the paper is silent): the metric each task contributes to the 5-task average --
# acc_norm (length-normalised) where lm-eval reports it, else acc.
AVERAGE_METRIC: dict[str, str] = {
    name: "acc_norm" if "acc_norm" in TASKS[name].metrics else "acc" for name in ALL_TASKS}
AVERAGE_KEY = "eval/paper_avg"

# names a user may give instead of a task list
TASK_SETS: dict[str, tuple[str, ...]] = {"paper": PAPER_TASKS, "all": ALL_TASKS}
ALIASES = {"siqa": "social_iqa", "arc_e": "arc_easy", "arc_c": "arc_challenge"}


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """`paper`, `all`, or task names (comma-separated or a list) -> task names, in the order given."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        names = TASK_SETS.get(name) or (ALIASES.get(name, name),)
        for n in names:
            if n not in TASKS:
                known = [*TASK_SETS, *TASKS]
                close = difflib.get_close_matches(n, [*known, *ALIASES], n=1)
                hint = f"did you mean {ALIASES.get(close[0], close[0])!r}? " if close else ""
                raise ConfigError(f"unknown task {n!r}; {hint}known: {', '.join(known)}")
            if n not in out:
                out.append(n)
    if not out:
        raise ConfigError("no tasks given; use paper, all, or names such as arc_easy,piqa")
    return tuple(out)


def metric_key(task: str, metric: str) -> str:
    return f"eval/{task}/{metric}"


def paper_average(metrics: Mapping[str, float]) -> float | None:
    """Mean over PAPER_TASKS of AVERAGE_METRIC, from flat `eval/<task>/<metric>` metrics; None
    unless all five are present."""
    values = [metrics.get(metric_key(t, AVERAGE_METRIC[t])) for t in PAPER_TASKS]
    if any(v is None for v in values):
        return None
    return sum(values) / len(values)

"""Sweep files: a name, a `base` run, a `grid` of axes, optional per-cell overrides -> RunConfigs.

```yaml
name: smoke                       # MLflow experiment and folder <out_dir>/<name>/
description: one line
base: {size: tiny, train: {max_steps: 150}, data: {tokenizer: byte}}   # RunConfig fields
grid:                             # axes: dotted RunConfig fields; cells = their product, in order
  placement: [pre_ln, post_ln, {name: mix_ln, args: {alpha: 0.25}}]
  lr: [1e-3, 3e-3]
  seed: [0, 1]
overrides:                        # optional: settings for the cells that match `when`
  - when: {placement: post_ln}    # value or list of values per dotted field
    set: {train.grad_clip: 0.5}
exclude:                          # optional: cells to leave out (same matching as `when`)
  - {placement: post_ln, size: 3.2b}
eval: {tasks: [arc_easy], limit: 100}   # optional: score each finished run (evals/)
search: {method: grid, workers: 2}      # optional: `periln search`, one Optuna study per
                                        # (placement, size) over lr (suite/search.py)
```

The file is validated once, at load: every problem is one line naming the file, the key and what
was expected (unknown keys and placements with the closest names, wrong types, YAML 1.1's `1e-3`
strings: numeric ones coerced, anything else rejected). Axes other than placement, size, lr and
seed are not named by the run key, so expansion appends them to it (`RunConfig.variant`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evals.tasks import resolve_tasks
from models import ConfigError
from models.placements import get_placement
from suite import cost
from suite.config import (
    RunConfig,
    build,
    check_value,
    coerce,
    deep_merge,
    field_type,
    fmt_value,
    parse_overrides,
    read_yaml,
    run_config_from_dict,
    set_dotted,
)
from suite.files import suggest

TOP_KEYS = ("name", "description", "base", "grid", "overrides", "exclude", "eval", "search")
KEY_AXES = ("placement", "size", "lr", "seed")  # the fields the run key names
SWEEP_WIDE = ("sweep", "out_dir")  # one per sweep: never an axis or an override
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class EvalSpec:
    """The sweep's evaluation switch: when `tasks` is non-empty, every run that finishes is scored
    with suite.evaluate.evaluate_checkpoint and the scores are recorded with the run."""

    tasks: tuple[str, ...] = ()
    limit: int | None = None  # examples per task (None: all)
    data_dir: str | None = None  # local task data (offline); None: evals' default
    num_fewshot: int = 0
    batch_size: int = 32
    # the adapter's end-of-text token before every context; None: what the model was trained with
    # (suite-trained runs: on, see suite.evaluate.PREFIX_RULES)
    prefix_eot: bool | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "tasks": list(self.tasks)}


@dataclass(frozen=True)
class SearchSpec:
    """The sweep's learning-rate search (`periln search`, suite/search.py): one Optuna study per
    (placement, size) (and variant). `grid` runs every lr of the sweep's grid once, at `seed`;
    `tpe` draws `n_trials` lrs log-uniformly from `lr` = [low, high] with TPE."""

    method: typing.Literal["grid", "tpe"] = "grid"
    lr: tuple[float, float] | None = None  # tpe: the log-uniform range [low, high]
    n_trials: int | None = None  # tpe: trials per study
    seed: int | None = None  # the trials' training seed; None: the grid's smallest seed
    workers: int = 1  # K worker jobs pulling trials from every study of the sweep
    # journal (default: <out_dir>/<name>/search/optuna.journal, for many SLURM jobs on a shared
    # file system) | sqlite (<out_dir>/<name>/search/optuna.db, one machine) | a journal file path |
    # an sqlite:/// URL
    storage: str = "journal"
    pruning: bool = False  # median pruner on intermediate val loss: a change of protocol (README)
    prune_startup_trials: int = 2  # finished trials in a study before the pruner acts (ours)
    prune_warmup_steps: int = 0  # steps of a trial before the pruner acts (ours)
    startup_trials: int = 4  # tpe: random trials before TPE models the loss (ours)
    sampler_seed: int = 0  # tpe


@dataclass(frozen=True)
class Sweep:
    name: str
    path: str
    description: str
    axes: Mapping[str, tuple[Any, ...]]  # axis -> its values as written (placements by name)
    cells: tuple[RunConfig, ...]
    eval: EvalSpec = field(default_factory=EvalSpec)
    excluded: int = 0  # grid cells removed by `exclude`
    search: SearchSpec | None = None  # the `search:` section (periln search)

    @property
    def out_dir(self) -> str:
        return self.cells[0].out_dir

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.cells]

    def counts(self) -> dict[str, dict[str, int]]:
        """Cells per value of each axis."""
        out: dict[str, dict[str, int]] = {}
        for axis in self.axes:
            per: dict[str, int] = {}
            for cell in self.cells:
                value = cell.placement if axis == "placement" else _get(cell.to_dict(), axis)
                label = _label(value)
                per[label] = per.get(label, 0) + 1
            out[axis] = per
        return out

    def select(self, only: list[str] | tuple[str, ...] = ()) -> list[RunConfig]:
        """The cells matching every `field=value` filter (a field given twice: either value).
        `key=<run key>` picks cells by run key."""
        if not only:
            return list(self.cells)
        cond: dict[str, list[Any]] = {}
        for item in only:
            if "=" not in item:
                raise ConfigError(f"--only {item!r}: expected field=value, e.g. placement=peri_ln")
            name, raw = (s.strip() for s in item.split("=", 1))
            value = raw if name == "key" else next(iter(parse_overrides([f"v={raw}"]).values()))
            cond.setdefault(name, []).append(value)
        keys = cond.pop("key", None)
        problems: list[str] = []
        norm = {k: [_check_value(k, v, f"--only {k}", problems) for v in vs] for k, vs in cond.items()}
        if problems:
            raise ConfigError("\n".join(problems))
        cells = [c for c in self.cells if (keys is None or c.key in keys) and _matches(c.to_dict(), norm)]
        if not cells:
            raise ConfigError(f"--only {' '.join(only)}: matches no cell of sweep {self.name!r} "
                              f"({len(self.cells)} cells; `periln plan {self.path}` lists them)")
        return cells


# ---------------------------------------------------------------------------------------- loading

def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Sweep:
    """Read, validate and expand a sweep file; `overrides` (key=value) apply to every cell."""
    data = read_yaml(path)
    return sweep_from_dict(data, str(path), parse_overrides(list(overrides)))


def sweep_from_dict(data: Any, where: str, extra: Mapping[str, Any] | None = None) -> Sweep:
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    for key in data:
        if key not in TOP_KEYS:
            problems.append(f"{where}: {key}: unknown key{suggest(str(key), TOP_KEYS, lead='; ')}")

    name = data.get("name")
    if name is None:
        problems.append(f"{where}: name: required (the MLflow experiment and the runs' folder name)")
    elif not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(f"{where}: name: expected letters, digits, '.', '_' or '-'; got {name!r}")
    description = data.get("description") or ""

    base = data.get("base") or {}
    if not isinstance(base, Mapping):
        problems.append(f"{where}: base: expected a mapping of run settings; got {base!r}")
        base = {}
    base = _nest(base)
    if "sweep" in base:
        problems.append(f"{where}: base.sweep: set by the sweep's name; remove it")
        base.pop("sweep")
    build(RunConfig, base, f"{where}: base", problems)

    axes = _parse_grid(data.get("grid"), where, problems)
    rules = _parse_rules(data.get("overrides"), where, problems)
    excludes = _parse_excludes(data.get("exclude"), where, problems)
    spec = _parse_eval(data.get("eval"), where, problems)
    search = _parse_search(data.get("search"), where, problems)
    extra = _nest(dict(extra or {}))
    if extra:
        build(RunConfig, extra, f"{where}: command-line override", problems)
    if problems:
        raise ConfigError("\n".join(problems))

    cells, excluded = _expand(name, base, axes, rules, excludes, extra, where)
    return Sweep(name=name, path=where, description=str(description),
                 axes={a: tuple(_label(v) for v in vals) for a, vals in axes.items()},
                 cells=tuple(cells), eval=spec, excluded=excluded, search=search)


def _expand(name, base, axes, rules, excludes, extra, where) -> tuple[list[RunConfig], int]:
    problems: dict[str, list[str]] = {}
    cells: list[RunConfig] = []
    excluded = 0
    # axes the key does not name become part of it (an explicit `variant` axis already is)
    extra_axes = [a for a, vals in axes.items() if a not in (*KEY_AXES, "variant") and len(vals) > 1]
    names, value_lists = list(axes), list(axes.values())
    for combo in itertools.product(*value_lists) if axes else [()]:
        data = copy.deepcopy(base)  # set_dotted writes into nested sections: never share base's
        data["sweep"] = name
        for axis, value in zip(names, combo):
            if axis == "placement":
                data["placement"], data["placement_args"] = value
            else:
                set_dotted(data, axis, value)
        flat = _flat_values(data)
        if any(_matches(flat, cond) for cond in excludes):
            excluded += 1
            continue
        for when, settings in rules:
            if _matches(flat, when):
                data = deep_merge(data, settings)
        data = deep_merge(data, extra)
        if extra_axes:
            auto = "_".join(_variant_part(a, _get(data, a)) for a in extra_axes)
            data["variant"] = f"{data['variant']}_{auto}" if data.get("variant") else auto
        label = ", ".join(f"{a}={_label(v)}" for a, v in zip(names, combo)) or "the only cell"
        try:
            cells.append(run_config_from_dict(data, where))
        except ConfigError as err:  # the same problem in many cells: one line, first cell named
            for line in str(err).splitlines():
                problems.setdefault(line.removeprefix(f"{where}: "), []).append(label)
    if problems:
        raise ConfigError("\n".join(
            f"{where} (cell {labels[0]}{f' and {len(labels) - 1} more' if len(labels) > 1 else ''}): {msg}"
            for msg, labels in problems.items()))
    if not cells:
        raise ConfigError(f"{where}: exclude: leaves no cell to run")
    seen: dict[str, int] = {}
    for cell in cells:
        seen[cell.key] = seen.get(cell.key, 0) + 1
    dupes = [k for k, n in seen.items() if n > 1]
    if dupes:
        raise ConfigError(f"{where}: grid: cells share run key {dupes[0]!r} ({len(dupes)} keys "
                          "repeat); give an axis distinct values or set `variant` in an override")
    if len({c.out_dir for c in cells}) > 1:
        raise ConfigError(f"{where}: out_dir: must be the same for every cell of a sweep")
    return cells, excluded


# ------------------------------------------------------------------------------------ grid parts

def _parse_grid(grid: Any, where: str, problems: list[str]) -> dict[str, list[Any]]:
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        problems.append(f"{where}: grid: expected a mapping of axis -> list of values; got {grid!r}")
        return {}
    axes: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        at = f"{where}: grid.{axis}"
        if not isinstance(values, list):
            problems.append(f"{at}: expected a list of values; got {values!r}")
            continue
        if not values:
            problems.append(f"{at}: expected at least one value")
            continue
        if axis == "placement":
            axes[axis] = [_placement_entry(v, f"{at}[{i}]", problems) for i, v in enumerate(values)]
            continue
        if axis in SWEEP_WIDE:
            problems.append(f"{at}: {axis} is one per sweep, not an axis; set it in base")
            continue
        if axis == "placement_args":
            problems.append(f"{at}: give arguments with each placement: "
                            "placement: [{name: mix_ln, args: {alpha: 0.25}}]")
            continue
        before = len(problems)
        field_type(str(axis), at, problems)
        if len(problems) > before:
            continue
        axes[axis] = [_check_value(axis, v, f"{at}[{i}]", problems) for i, v in enumerate(values)]
    return axes


def _placement_entry(value: Any, at: str, problems: list[str]) -> tuple[str, dict[str, Any]]:
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, Mapping) and "name" in value and set(value) <= {"name", "args"}:
        name, args = value["name"], value.get("args") or {}
        if not isinstance(args, Mapping):
            problems.append(f"{at}.args: expected a mapping of placement arguments; got {args!r}")
            args = {}
    else:
        problems.append(f"{at}: expected a placement name or {{name: ..., args: {{...}}}}; got {value!r}")
        return ("?", {})
    try:
        get_placement(str(name), **args)
    except ConfigError as err:
        problems.append(f"{at}: {err}")
    except TypeError as err:
        problems.append(f"{at}.args: {err}")
    return (str(name), dict(args))


def _parse_rules(rules: Any, where: str, problems: list[str]) -> list[tuple[dict, dict]]:
    if rules is None:
        return []
    if not isinstance(rules, list):
        problems.append(f"{where}: overrides: expected a list of {{when: {{...}}, set: {{...}}}}")
        return []
    out = []
    for i, rule in enumerate(rules):
        at = f"{where}: overrides[{i}]"
        if not isinstance(rule, Mapping) or set(rule) - {"when", "set"} or "set" not in rule:
            problems.append(f"{at}: expected {{when: {{field: value}}, set: {{field: value}}}}; got {rule!r}")
            continue
        when = _parse_condition(rule.get("when") or {}, f"{at}.when", problems)
        settings = rule["set"]
        if not isinstance(settings, Mapping):
            problems.append(f"{at}.set: expected a mapping of run settings; got {settings!r}")
            continue
        settings = _nest(settings)
        for key in SWEEP_WIDE:
            if key in settings:
                problems.append(f"{at}.set.{key}: one per sweep; set it in base")
                settings.pop(key)
        build(RunConfig, settings, f"{at}.set", problems)
        out.append((when, settings))
    return out


def _parse_excludes(excludes: Any, where: str, problems: list[str]) -> list[dict]:
    if excludes is None:
        return []
    if not isinstance(excludes, list):
        problems.append(f"{where}: exclude: expected a list of {{field: value}} conditions")
        return []
    return [_parse_condition(c, f"{where}: exclude[{i}]", problems) for i, c in enumerate(excludes)]


def _parse_condition(cond: Any, at: str, problems: list[str]) -> dict[str, list[Any]]:
    if not isinstance(cond, Mapping):
        problems.append(f"{at}: expected a mapping of field: value (or list of values); got {cond!r}")
        return {}
    out = {}
    for key, value in cond.items():
        values = value if isinstance(value, list) else [value]
        out[key] = [_check_value(str(key), v, f"{at}.{key}", problems) for v in values]
    return out


def _parse_search(spec: Any, where: str, problems: list[str]) -> SearchSpec | None:
    if spec is None:
        return None
    at = f"{where}: search"
    if not isinstance(spec, Mapping):
        problems.append(f"{at}: expected a mapping ({', '.join(f.name for f in fields(SearchSpec))}); "
                        f"got {spec!r}")
        return None
    spec = dict(spec)
    lr = spec.pop("lr", None)
    before = len(problems)
    out = build(SearchSpec, spec, at, problems)
    if len(problems) > before:
        return None
    if lr is not None:
        if not isinstance(lr, list) or len(lr) != 2:
            problems.append(f"{at}.lr: expected [low, high] (a log-uniform range for tpe); got {lr!r}")
            return None
        lr = tuple(coerce(v, float, f"{at}.lr[{i}]", problems) for i, v in enumerate(lr))
        if len(problems) > before:
            return None
        if not 0 < lr[0] < lr[1]:
            problems.append(f"{at}.lr: expected 0 < low < high; got {list(lr)}")
    if out.method == "tpe":
        if lr is None:
            problems.append(f"{at}.lr: method tpe needs a range [low, high], e.g. lr: [1e-4, 1e-2]")
        if out.n_trials is None or out.n_trials < 1:
            problems.append(f"{at}.n_trials: method tpe needs the trials per study (>= 1); "
                            f"got {out.n_trials!r}")
    else:
        for name, value in (("lr", lr), ("n_trials", out.n_trials)):
            if value is not None:
                problems.append(f"{at}.{name}: only for method tpe; method grid runs the grid's lr "
                                "values (grid.lr)")
    for name in ("workers", "prune_startup_trials", "startup_trials"):
        if getattr(out, name) < (1 if name == "workers" else 0):
            problems.append(f"{at}.{name}: expected >= {1 if name == 'workers' else 0}; "
                            f"got {getattr(out, name)}")
    if out.prune_warmup_steps < 0:
        problems.append(f"{at}.prune_warmup_steps: expected >= 0; got {out.prune_warmup_steps}")
    if not out.storage.strip():
        problems.append(f"{at}.storage: expected journal, sqlite, a journal file or an sqlite:/// URL")
    return dataclasses.replace(out, lr=lr)


def _parse_eval(spec: Any, where: str, problems: list[str]) -> EvalSpec:
    if spec is None:
        return EvalSpec()
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: eval: expected a mapping (tasks, limit, data_dir, num_fewshot, "
                        f"batch_size, prefix_eot); got {spec!r}")
        return EvalSpec()
    spec = dict(spec)
    tasks = spec.pop("tasks", [])
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        problems.append(f"{where}: eval.tasks: expected a list of lm-eval task names; got {tasks!r}")
        tasks = []
    if tasks:  # names checked now: an unknown one would otherwise fail each cell after training
        try:
            tasks = list(resolve_tasks(tasks))
        except ConfigError as err:
            problems.append(f"{where}: eval.tasks: {err}")
    out = build(EvalSpec, spec, f"{where}: eval", problems)
    for name, least in (("limit", 1), ("batch_size", 1), ("num_fewshot", 0)):
        value = getattr(out, name)
        if isinstance(value, (int, float)) and value < least:
            problems.append(f"{where}: eval.{name}: must be >= {least}; got {value}")
    return dataclasses.replace(out, tasks=tuple(tasks))


# ----------------------------------------------------------------------------------- field types

def _check_value(dotted: str, value: Any, at: str, problems: list[str]) -> Any:
    """A grid/condition value: placements (name or {name, args}) checked against the registry, every
    other field coerced to its declared type by suite.config."""
    if dotted == "placement":
        return _placement_entry(value, at, problems)[0]
    return check_value(dotted, value, at, problems)


# ------------------------------------------------------------------------------------- utilities

def _nest(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys ({'train.lr': 1}) as nested mappings; nested mappings kept."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and key != "placement_args":
            value = _nest(value)
        if isinstance(key, str) and "." in key:
            nested: dict[str, Any] = {}
            set_dotted(nested, key, value)
            out = deep_merge(out, nested)
        else:
            out = deep_merge(out, {key: value})
    return out


def _get(data: Mapping[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _flat_values(data: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's settings by dotted name, with defaults filled in (so conditions may name any
    field, set or not)."""
    try:
        resolved = _plain_defaults(data)
    except ConfigError:
        resolved = data
    return resolved


def _plain_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    problems: list[str] = []
    cfg = build(RunConfig, data, "cell", problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg.to_dict()


def _matches(cell: Mapping[str, Any], cond: Mapping[str, list[Any]]) -> bool:
    for key, wanted in cond.items():
        have = _get(cell, key)
        if not any(_same(have, w) for w in wanted):
            return False
    return True


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12)
        except (TypeError, ValueError):
            return False
    return a == b


def _label(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):  # placement
        name, args = value
        return name + "".join(f"_{k}{fmt_value(v)}" for k, v in sorted(args.items()))
    return fmt_value(value)


def _variant_part(axis: str, value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+]", "", f"{axis.split('.')[-1]}{fmt_value(value)}")


# ------------------------------------------------------------------------------------------ plan

def format_plan(sweep: Sweep, cells: list[RunConfig], mfu: float = cost.DEFAULT_MFU,
                peak_flops: float = cost.HOPPER_SXM_DENSE_16BIT) -> str:
    """`periln plan`: the cells, counts per axis, and the cost (tokens; GPU-hours at `mfu`;
    suite.cost)."""
    costs = cost.estimate(cells, mfu, peak_flops)
    lines = [f"sweep {sweep.name} ({sweep.path}): {len(cells)} cells"
             + (f" ({sweep.excluded} excluded)" if sweep.excluded else "")]
    if sweep.description:
        lines.append(f"  {sweep.description}")
    lines.append("axes:")
    for axis, per in sweep.counts().items():
        lines.append(f"  {axis} ({len(per)}): " + ", ".join(f"{v} x{n}" for v, n in per.items()))
    lines.append(f"{'cell (run key)':<44}{'steps':>8}{'tokens':>10}{'PFLOPs':>12}{'GPU-h':>10}")
    for cell in cells:
        c = costs[cell.key]
        steps = cost.resolve_budget(cell).train.max_steps
        lines.append(f"{cell.key:<44}{steps:>8}{_si(c.tokens):>10}{c.flops / 1e15:>12.4g}"
                     f"{c.gpu_hours:>10.4g}")
    for axis in ("size", "placement"):
        lines.append(f"{'per ' + axis:<44}{'cells':>8}{'tokens':>10}{'PFLOPs':>12}{'GPU-h':>10}")
        for value, group in _subtotals(cells, costs, axis).items():
            lines.append(f"  {value:<42}{len(group):>8}{_si(sum(c.tokens for c in group)):>10}"
                         f"{sum(c.flops for c in group) / 1e15:>12.4g}"
                         f"{sum(c.gpu_hours for c in group):>10.4g}")
    tokens = sum(c.tokens for c in costs.values())
    flops = sum(c.flops for c in costs.values())
    hours = sum(c.gpu_hours for c in costs.values())
    lines.append(f"total: {_si(tokens)} tokens, {flops:.3g} FLOPs, {hours:,.4g} GPU-hours at MFU "
                 f"{mfu:g} of {peak_flops / 1e12:g} TFLOP/s per GPU (FLOPs: 6 x (non-embedding + "
                 f"LM-head params) + 12 x layers x d x seq per token)")
    return "\n".join(lines)


def _subtotals(cells: list[RunConfig], costs: Mapping[str, cost.Cost],
               axis: str) -> dict[str, list[cost.Cost]]:
    """The cells' costs grouped by `axis` (size: the run's size; placement: the arm, i.e. the
    placement with its arguments and variant), in the order the cells come."""
    out: dict[str, list[cost.Cost]] = {}
    for cell in cells:
        value = cell.size if axis == "size" else cell.arm
        out.setdefault(value, []).append(costs[cell.key])
    return out


def _si(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))

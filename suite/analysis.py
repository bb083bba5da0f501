"""Aggregation of runs.csv rows: the runs grouped by (arm, size, LR), mean ± std over seeds (Stat),
the LR choice and divergence rules, and per-layer profiles of the diagnostics.

The rules (printed in every caption of suite.tables):
- LR_RULE: which learning rate represents a placement at a size;
- DIVERGENCE_RULE: what happens to diverged seeds;
- STD_RULE: mean ± std over seeds is the sample standard deviation (n - 1), blank for n = 1.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from evals.tasks import AVERAGE_METRIC, PAPER_TASKS, metric_key
from models import SIZES
from models.placements import PLACEMENTS
from suite.outcome import DIVERGED, FAILED_TO_LEARN, USED
from suite.outcome import RULE as FAILED_RULE

ARM_ORDER = ("post_ln", "pre_ln", "peri_ln")  # the paper's order; other arms follow, sorted
DASH = "—"  # a value not measured, as the tables and the claims' numbers print it

LR_RULE = ("LR chosen per (placement, size): among the learning rates with no diverged seed, the one "
           "with the lowest mean final val loss over its seeds (ties: the smaller LR); if every LR has "
           "a diverged seed, the one with the fewest, then the lowest mean val loss. Final train loss "
           "stands in where no run of that placement and size recorded a val loss.")
DIVERGENCE_RULE = ("Diverged seeds are kept and shown as k/n diverged (n = every seed that ran to its "
                   "end or diverged at that LR); they are excluded from mean ± std. Seeds that failed to "
                   f"learn ({FAILED_RULE}) are results: they enter mean ± std and are counted as k/n failed. "
                   "Crashed and unfinished runs are excluded and counted in the note below the table.")
STD_RULE = "mean ± std over seeds (sample std, n - 1; no std when n = 1)."
EDGE_RULE = ("(smallest tried) / (largest tried) after an LR: the chosen LR is an end of the grid that "
             "placement ran at that size, so a better one may lie beyond it.")


def finite(v: Any) -> float | None:
    """v as a float when it is a finite number; None for a missing cell, NaN or inf."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def paper_avg(row: dict[str, Any]) -> float | None:
    """5-task average (fraction) of one run: evals.tasks.AVERAGE_METRIC of each PAPER_TASKS task."""
    values = [finite(row.get(metric_key(t, AVERAGE_METRIC[t]))) for t in PAPER_TASKS]
    return None if any(v is None for v in values) else sum(values) / len(values)


def placement_title(placement: str) -> str:
    """The readable name of a registered placement ("Peri-LN"); an unknown one prints as given."""
    cls = PLACEMENTS.get(placement)
    return cls.title if cls is not None else placement


def layer_profile(row: dict[str, Any], family: str) -> dict[int, float]:
    """{layer index: value} from columns `<family>/layer_NN` (or `/block_NN`)."""
    pat = re.compile(rf"^{re.escape(family)}/(?:layer|block)_(\d+)$")
    out = {}
    for col, v in row.items():
        m = pat.match(col)
        if m and finite(v) is not None:
            out[int(m.group(1))] = float(v)
    return out


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None
    n: int  # values that entered the mean

    @staticmethod
    def of(values: Iterable[float | None]) -> Stat:
        vals = [v for v in values if v is not None]
        if not vals:
            return Stat(None, None, 0)
        return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))


def _size_order(size: str) -> tuple[int, str]:
    names = list(SIZES)
    return (names.index(size), size) if size in names else (len(names), size)


def _arm_order(arm: str) -> tuple[int, str]:
    return (ARM_ORDER.index(arm), arm) if arm in ARM_ORDER else (len(ARM_ORDER), arm)


@dataclass
class Analysis:
    """The runs grouped by (arm, size, lr), with the chosen LR per (arm, size)."""

    rows: list[dict[str, Any]]
    cells: dict[tuple[str, str, float], list[dict[str, Any]]] = field(default_factory=dict)
    chosen: dict[tuple[str, str], float | None] = field(default_factory=dict)
    select_metric: dict[tuple[str, str], str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)  # arm -> readable name (tables, figures)

    def __post_init__(self) -> None:
        for r in sorted(self.rows, key=lambda r: (str(r["key"]), r["seed"])):
            self.cells.setdefault((r["arm"], r["size"], float(r["lr"])), []).append(r)
        for arm, size in {(a, s) for a, s, _ in self.cells}:
            self.chosen[(arm, size)], self.select_metric[(arm, size)] = self._choose(arm, size)
        self.titles = self._titles()

    # --- readable names
    def _titles(self) -> dict[str, str]:
        """Each arm as the tables print it: the placement's title, then its arguments and variant
        ("Mix-LN (alpha=0.25)"). Read from the identity columns, never cut out of the arm; two arms
        that would print alike (peri_ln and its alias sandwich_ln) keep their raw names beside."""
        out = {}
        for arm in self.arms():
            r = next(r for (a, _, _), rows in sorted(self.cells.items()) if a == arm for r in rows)
            extra = [x for x in (*str(r.get("placement_args") or "").split(";"), str(r.get("variant") or ""))
                     if x]
            out[arm] = placement_title(str(r.get("placement") or arm)) + (f" ({'; '.join(extra)})"
                                                                           if extra else "")
        clash = {t for t in out.values() if list(out.values()).count(t) > 1}
        return {arm: f"{t} [{arm}]" if t in clash else t for arm, t in out.items()}

    def title(self, arm: str) -> str:
        """The arm's readable name; an arm with no run here (a paper reference) by its placement."""
        return self.titles.get(arm) or placement_title(arm)

    # --- structure
    @property
    def sizes(self) -> list[str]:
        return sorted({s for _, s, _ in self.cells}, key=_size_order)

    def arms(self, size: str | None = None) -> list[str]:
        return sorted({a for a, s, _ in self.cells if size in (None, s)}, key=_arm_order)

    def lrs(self, arm: str | None = None, size: str | None = None) -> list[float]:
        return sorted({lr for a, s, lr in self.cells if arm in (None, a) and size in (None, s)})

    def runs(self, arm: str, size: str, lr: float | None = None,
             status: str | tuple[str, ...] | None = USED) -> list[dict]:
        """The runs of (arm, size[, lr]) whose status is `status` (one, a tuple, or None: any)."""
        wanted = (status,) if isinstance(status, str) else status
        out = []
        for (a, s, r), rows in sorted(self.cells.items()):
            if a == arm and s == size and (lr is None or r == lr):
                out.extend(x for x in rows if wanted is None or x["status"] in wanted)
        return out

    def counts(self, arm: str, size: str, lr: float | None = None) -> tuple[int, int]:
        """(diverged, used + diverged) seeds."""
        used = len(self.runs(arm, size, lr))
        div = len(self.runs(arm, size, lr, DIVERGED))
        return div, used + div

    def failed(self, arm: str, size: str, lr: float | None = None) -> int:
        """Seeds that ran to the end but failed to learn."""
        return len(self.runs(arm, size, lr, FAILED_TO_LEARN))

    def excluded(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            if r["status"] not in (*USED, DIVERGED):
                out[r["status"] or "unknown"] = out.get(r["status"] or "unknown", 0) + 1
        return dict(sorted(out.items()))

    # --- the LR rule
    def _choose(self, arm: str, size: str) -> tuple[float | None, str]:
        metric = "val_loss" if any(finite(r.get("val_loss")) is not None
                                    for r in self.runs(arm, size)) else "train_loss"
        best, best_key = None, None
        for lr in self.lrs(arm, size):
            st = Stat.of(finite(r.get(metric)) for r in self.runs(arm, size, lr))
            if st.n == 0:
                continue
            div, _ = self.counts(arm, size, lr)
            k = (div, st.mean, lr)
            if best_key is None or k < best_key:
                best, best_key = lr, k
        return best, metric

    def lr_edge(self, arm: str, size: str) -> str | None:
        """"smallest" / "largest" when the chosen LR is that end of the LRs this arm has evidence at
        (a finished, failed-to-learn or diverged seed) at this size, and there are two or more
        (one LR tried is a choice made elsewhere, e.g. a search's best); None otherwise."""
        lr = self.chosen.get((arm, size))
        grid = [x for x in self.lrs(arm, size) if self.counts(arm, size, x)[1]]
        if lr is None or len(grid) < 2:
            return None
        return "smallest" if lr == grid[0] else "largest" if lr == grid[-1] else None

    def edge_warnings(self) -> list[str]:
        """One line per (arm, size) whose chosen LR is an end of its grid."""
        out = []
        for size in self.sizes:
            for arm in self.arms(size):
                edge = self.lr_edge(arm, size)
                if edge:
                    out.append(f"best LR of {self.title(arm)} at {size} is the {edge} tried "
                               f"({self.chosen[(arm, size)]:g}): the optimum was not found; widen the grid")
        return out

    def at_chosen(self, arm: str, size: str) -> list[dict[str, Any]]:
        lr = self.chosen.get((arm, size))
        return [] if lr is None else self.runs(arm, size, lr)

    def stat(self, arm: str, size: str, fn: Callable[[dict], float | None]) -> Stat:
        return Stat.of(fn(r) for r in self.at_chosen(arm, size))

    def profile(self, arm: str, size: str, family: str) -> dict[int, float]:
        """Per-layer mean over the chosen LR's finished seeds (layers every seed recorded)."""
        profs = [layer_profile(r, family) for r in self.at_chosen(arm, size)]
        profs = [p for p in profs if p]
        if not profs:
            return {}
        layers = sorted(set.intersection(*(set(p) for p in profs)))
        return {layer: statistics.fmean(p[layer] for p in profs) for layer in layers}


def col(name: str) -> Callable[[dict], float | None]:
    return lambda r: finite(r.get(name))

"""The paper's claims (docs/paper.md section 2) tested on a sweep's run records.

Each claim states its quantity (a number per run), the cells it compares, the statistic and its
preconditions. The engine returns, per claim, one verdict and the evidence behind it:

- **holds** / **does not hold**: every compared group's 95% interval lies wholly on the claim's
  side of its threshold / some group's lies wholly on the other side (suite/stats.py);
- **inconclusive**: an interval straddles the threshold (too few seeds for the effect's size);
- **not testable here**: a precondition failed (too shallow, one seed, synthetic benchmarks, the
  phenomenon never provoked, ...), with the reason.

Comparisons (ours):
- stability claims (massive activations, FP16 margin, variance, gradients, spikes, divergence) are
  high-LR phenomena: they compare the two arms at **matched (size, LR)** cells, every LR both arms
  ran, paired by seed;
- quality claims (accuracy, loss, seed spread) compare each arm at **its own chosen LR** (the
  Table 1 rule, suite/analysis.py), paired by seed.
Runs that diverged or failed to learn are results: they enter the stability claims with their last
probe, count in the divergence claims, and a size where one arm has no usable run is reported as
such, never silently dropped.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evals.tasks import AVERAGE_METRIC, PAPER_TASKS, metric_key
from suite import stats
from suite.analysis import Analysis, finite, layer_profile, paper_avg
from suite.outcome import DIVERGED, FAILED_TO_LEARN, FINISHED
from suite.stats import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE, Interval

FP16_MAX = 65504.0  # largest finite float16
# Sun et al. 2024 (Massive Activations in LLMs): a value is massive when it is above 100 in absolute
# value and about 1000x the median magnitude of its hidden state.
MASSIVE_ABS, MASSIVE_RATIO = 100.0, 1000.0
MIN_DEPTH = 8  # ours: depth effects (variance growth, vanishing gradients) need a deep stack
MIN_STEPS = 100  # ours: "after training" claims need a trained model, not one near init
FLAT_RATIO = 2.0  # ours: "flat" = max / min of the per-layer variance below 2

Curves = Mapping[str, Mapping[str, tuple[Sequence[int], Sequence[float]]]]
USABLE = (FINISHED, FAILED_TO_LEARN)  # runs that ran to the end (learned or not)
PROBED = (FINISHED, FAILED_TO_LEARN, DIVERGED)  # runs whose probes are evidence


# --------------------------------------------------------------------------- per-run quantities

def log10_peak(family: str) -> Callable[[dict], float | None]:
    """log10 of the largest per-layer value of `family` at the last probe."""

    def value(row: dict) -> float | None:
        vals = [v for v in layer_profile(row, family).values() if v > 0 and math.isfinite(v)]
        return math.log10(max(vals)) if vals else None

    return value


def peak_maxabs(row: dict, curves: Curves | None) -> float | None:
    """The largest forward activation of the run over all probes: the recorded running maximum
    (diag/peak_maxabs, stream and sub-layer outputs), else the largest diag/maxabs in curves.csv,
    else the last probe's."""
    v = finite(row.get("diag/peak_maxabs"))
    if v is not None:
        return v
    hist = (curves or {}).get(str(row.get("key")), {})
    vals = [x for m, (_, ys) in hist.items() if m.startswith("diag/maxabs/") for x in ys
            if math.isfinite(x)]
    vals += list(layer_profile(row, "diag/maxabs").values())
    return max(vals) if vals else None


def exp_preference(row: dict) -> float | None:
    """How much better a log-linear (exponential) fit describes the per-layer variance (layers >= 1)
    than a straight line: log10(RMSE_linear / RMSE_exponential), both residuals measured on log Var
    so they compare. > 0: exponential fits better; < 0: linear fits better."""
    prof = layer_profile(row, "diag/var")
    layers = [k for k in sorted(prof) if k >= 1 and prof[k] > 0]
    if len(layers) < 4:
        return None
    x = np.array(layers, dtype=float)
    logv = np.log([prof[k] for k in layers])
    v = np.exp(logv)
    exp_fit = np.polyval(np.polyfit(x, logv, 1), x)
    lin = np.polyval(np.polyfit(x, v, 1), x)
    lin = np.maximum(lin, v.min() * 1e-3)  # a line through zero has no log: a very bad fit
    eps = 1e-3  # 0.1% in variance: below it both fits are perfect and tie
    rmse_exp = float(np.sqrt(np.mean((logv - exp_fit) ** 2))) + eps
    rmse_lin = float(np.sqrt(np.mean((logv - np.log(lin)) ** 2))) + eps
    return math.log10(rmse_lin / rmse_exp)


def flatness(row: dict) -> float | None:
    """log10(max / min) over layers >= 1 of the per-layer variance."""
    prof = layer_profile(row, "diag/var")
    vals = [prof[k] for k in prof if k >= 1 and prof[k] > 0]
    return math.log10(max(vals) / min(vals)) if len(vals) >= 2 else None


def _cv(vals: Sequence[float]) -> float | None:
    m = statistics.fmean(vals)
    return statistics.pstdev(vals) / m if m > 0 else None


def grad_cv_end(row: dict) -> float | None:
    """Coefficient of variation over blocks of the per-block gradient norm at the last probe."""
    prof = layer_profile(row, "diag/grad_norm")
    return _cv([prof[k] for k in sorted(prof)]) if len(prof) >= 2 else None


def _first_probe(row: dict, curves: Curves | None, family: str) -> dict[int, float]:
    """{layer: value} of `family` at the run's first probe (step 0 = at initialization)."""
    hist = (curves or {}).get(str(row.get("key")), {})
    prefix = f"{family}/"
    out, first = {}, None
    for m, (steps, _) in hist.items():
        if m.startswith(prefix) and steps:
            first = min(steps) if first is None else min(first, min(steps))
    if first is None:
        return out
    for m, (steps, ys) in hist.items():
        if m.startswith(prefix) and first in steps:
            out[int(m.rsplit("_", 1)[-1])] = ys[list(steps).index(first)]
    return out


def grad_cv_init(row: dict, curves: Curves | None) -> float | None:
    """The same coefficient of variation at the first probe (step 0 when the run probed at init)."""
    prof = _first_probe(row, curves, "diag/grad_norm")
    return _cv([prof[k] for k in sorted(prof)]) if len(prof) >= 2 else None


def var_growth_over_training(row: dict, curves: Curves | None) -> float | None:
    """log10 of the last layer's variance at the last probe over its value at the first probe."""
    first = _first_probe(row, curves, "diag/var")
    last = layer_profile(row, "diag/var")
    if not first or not last:
        return None
    top = max(last)
    if top not in first or first[top] <= 0 or last[top] <= 0:
        return None
    return math.log10(last[top] / first[top])


def grad_ratio_first_last(row: dict) -> float | None:
    """log10(grad norm of block 1 / grad norm of the last block) at the last probe."""
    prof = layer_profile(row, "diag/grad_norm")
    if len(prof) < 2:
        return None
    lo, hi = prof[min(prof)], prof[max(prof)]
    return math.log10(lo / hi) if lo > 0 and hi > 0 else None


def spikes_per_1000(row: dict) -> float | None:
    spikes, steps = finite(row.get("diag/spikes")), finite(row.get("step"))
    return None if spikes is None or not steps else 1000.0 * spikes / steps


# ------------------------------------------------------------------------------------ evidence

@dataclass(frozen=True)
class Group:
    """One compared group: a (size, LR) cell or a size at the arms' chosen LRs."""

    label: str
    verdict: str
    interval: Interval | None = None
    means: Mapping[str, float | None] = field(default_factory=dict)  # arm -> mean of the quantity
    note: str = ""


@dataclass(frozen=True)
class Result:
    claim: Claim
    verdict: str
    groups: tuple[Group, ...] = ()
    reason: str = ""  # why not testable / what decided it

    @property
    def method(self) -> str:
        methods = {g.interval.method for g in self.groups if g.interval is not None}
        return "; ".join(sorted(methods)) if methods else self.claim.method


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str  # as docs/paper.md section 2 states it
    tag: str  # its confidence tag there
    quantity: str  # the number per run, stated
    compares: str  # which cells, paired how
    threshold: str  # what the interval must clear
    method: str
    check: Callable[[Claim, Data], Result] = field(repr=False)

    def evaluate(self, data: Data) -> Result:
        return self.check(self, data)


@dataclass
class Data:
    """What the claims read: the runs (with the LR rule of Table 1) and their curves, if exported."""

    analysis: Analysis
    curves: Curves | None = None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.analysis.rows

    def runs(self, arm: str, size: str, lr: float | None, statuses: Sequence[str]) -> list[dict]:
        return [r for r in self.analysis.runs(arm, size, lr, status=None) if r["status"] in statuses]

    def matched_cells(self, a: str, b: str) -> list[tuple[str, float]]:
        """Every (size, LR) both arms ran."""
        cells_a = {(s, lr) for arm, s, lr in self.analysis.cells if arm == a}
        cells_b = {(s, lr) for arm, s, lr in self.analysis.cells if arm == b}
        return sorted(cells_a & cells_b, key=lambda c: (self.analysis.sizes.index(c[0]), c[1]))


def _by_seed(rows: Sequence[dict], fn: Callable[[dict], float | None]) -> dict[int, float]:
    out = {}
    for r in rows:
        v = fn(r)
        if v is not None and math.isfinite(v):
            out[int(r["seed"])] = v
    return out


def _paired(qa: Mapping[int, float], qb: Mapping[int, float]) -> list[float]:
    return [qa[s] - qb[s] for s in sorted(set(qa) & set(qb))]


def _mean(q: Mapping[int, float]) -> float | None:
    return statistics.fmean(q.values()) if q else None


def _lr(lr: float) -> str:
    return f"{lr:g}"


def _depth(rows: Sequence[dict]) -> int | None:
    depths = [finite(r.get("n_layers")) for r in rows]
    depths = [int(d) for d in depths if d is not None]
    return min(depths) if depths else None


def _too_small(rows: Sequence[dict], min_depth: int | None, min_steps: int | None) -> str | None:
    """Why a group of runs is too shallow or too short for a claim, or None."""
    depth = _depth(rows)
    if min_depth is not None and (depth is None or depth < min_depth):
        return f"depth {depth or 'unrecorded'} < {min_depth} layers"
    steps = [finite(r.get("step")) or 0 for r in rows]
    if min_steps is not None and (not steps or min(steps) < min_steps):
        return f"{min(steps, default=0):.0f} steps < {min_steps}"
    return None


def _untestable(claim: Claim, reason: str, groups: Sequence[Group] = ()) -> Result:
    return Result(claim, UNTESTABLE, tuple(groups), reason)


def _conclude(claim: Claim, groups: list[Group], empty: str) -> Result:
    tested = [g for g in groups if g.verdict != UNTESTABLE]
    if not tested:
        return _untestable(claim, empty if not groups else
                           "; ".join(f"{g.label}: {g.note}" for g in groups if g.note) or empty, groups)
    verdict = stats.combine([g.verdict for g in tested])
    return Result(claim, verdict, tuple(groups))


def _compare(label: str, qa: Mapping[int, float], qb: Mapping[int, float], a: str, b: str,
             threshold: float, greater: bool) -> Group:
    """Paired a - b over shared seeds, decided against `threshold`."""
    means = {a: _mean(qa), b: _mean(qb)}
    diffs = _paired(qa, qb)
    iv = stats.mean_interval(diffs)
    if iv is None:
        return Group(label, UNTESTABLE, None, means,
                     f"{len(diffs)} matched seed pair{'s' * (len(diffs) != 1)} (needs >= 2)")
    return Group(label, stats.decide(iv, threshold, greater), iv, means)


# ------------------------------------------------------------------------ the claims' evaluators

def matched(a: str, b: str, fn: Callable[[dict, Curves | None], float | None], threshold: float,
            greater: bool, statuses: Sequence[str] = PROBED, min_depth: int | None = None,
            min_steps: int | None = None,
            provoked: Callable[[Data, list[dict], list[dict]], str | None] | None = None,
            precondition: Callable[[Data], str | None] | None = None) -> Callable[[Claim, Data], Result]:
    """A claim compared at every (size, LR) both arms ran, paired by seed: fn(a) - fn(b) against
    `threshold`. `provoked(data, runs_a, runs_b)` returns None when the cell shows the phenomenon,
    else why not (the cell is then left out, and said so)."""

    def evaluate_claim(claim: Claim, data: Data) -> Result:
        if precondition is not None and (why := precondition(data)):
            return _untestable(claim, why)
        cells = data.matched_cells(a, b)
        if not cells:
            return _untestable(claim, f"no (size, LR) cell where both {a} and {b} ran")
        groups = []
        for size, lr in cells:
            label = f"{size} LR {_lr(lr)}"
            ra, rb = data.runs(a, size, lr, statuses), data.runs(b, size, lr, statuses)
            if why := _too_small(ra + rb, min_depth, min_steps):
                groups.append(Group(label, UNTESTABLE, note=why))
                continue
            if provoked is not None and (why := provoked(data, ra, rb)):
                groups.append(Group(label, UNTESTABLE, note=why))
                continue
            qa = _by_seed(ra, lambda r: fn(r, data.curves))
            qb = _by_seed(rb, lambda r: fn(r, data.curves))
            groups.append(_compare(label, qa, qb, a, b, threshold, greater))
        return _conclude(claim, groups, "no matched cell passed the preconditions")

    return evaluate_claim


def _row_fn(fn: Callable[[dict], float | None]) -> Callable[[dict, Curves | None], float | None]:
    return lambda row, _curves: fn(row)


def _massive_somewhere(_data: Data, ra: list[dict], rb: list[dict]) -> str | None:
    for r in ra + rb:
        prof_abs, prof_ratio = layer_profile(r, "diag/maxabs"), layer_profile(r, "diag/max_over_median")
        if any(prof_abs.get(k, 0) > MASSIVE_ABS and prof_ratio.get(k, 0) > MASSIVE_RATIO for k in prof_abs):
            return None
    return f"no massive activation in either arm (max|x| > {MASSIVE_ABS:g} and > {MASSIVE_RATIO:g}x median)"


def _pre_above_fp16(data: Data, ra: list[dict], rb: list[dict]) -> str | None:
    pre = ra if ra and ra[0]["arm"] == "pre_ln" else rb
    peaks = [peak_maxabs(r, data.curves) for r in pre]
    if any(p is not None and p > FP16_MAX for p in peaks):
        return None
    top = max((p for p in peaks if p is not None), default=None)
    return f"Pre-LN stayed below 65504 (peak {top:.3g})" if top is not None else "no Pre-LN peak recorded"


def fp16_margin(claim: Claim, data: Data) -> Result:
    """Peri-LN's margin below 65504, log10(65504 / its peak), in the cells where Pre-LN crossed it."""
    groups = []
    for size, lr in data.matched_cells("peri_ln", "pre_ln"):
        label = f"{size} LR {_lr(lr)}"
        peri, pre = data.runs("peri_ln", size, lr, PROBED), data.runs("pre_ln", size, lr, PROBED)
        if why := _pre_above_fp16(data, pre, []):
            groups.append(Group(label, UNTESTABLE, note=why))
            continue
        margins = _by_seed(peri, lambda r: (math.log10(FP16_MAX / p) if (p := peak_maxabs(r, data.curves))
                                            else None))
        pre_peak = _by_seed(pre, lambda r: peak_maxabs(r, data.curves))
        iv = stats.mean_interval(list(margins.values()))
        means = {"peri_ln margin (log10)": _mean(margins),
                 "pre_ln peak": max(pre_peak.values()) if pre_peak else None}
        if iv is None:
            groups.append(Group(label, UNTESTABLE, None, means,
                                f"{len(margins)} Peri-LN seed(s) (needs >= 2)"))
        else:
            groups.append(Group(label, stats.decide(iv, 0.0, greater=True), iv, means))
    if not groups:
        return _untestable(claim, "no (size, LR) cell where both peri_ln and pre_ln ran")
    return _conclude(claim, groups, "Pre-LN never exceeded 65504: the margin is not provoked here")


def one_arm(arm: str, fn: Callable[[dict], float | None], threshold: float, greater: bool,
            statuses: Sequence[str] = USABLE, min_depth: int | None = None,
            min_steps: int | None = None) -> Callable[[Claim, Data], Result]:
    """A property of one arm, at every (size, LR) it ran: the mean of fn over seeds vs threshold."""

    def evaluate_claim(claim: Claim, data: Data) -> Result:
        cells = sorted({(s, lr) for a, s, lr in data.analysis.cells if a == arm},
                       key=lambda c: (data.analysis.sizes.index(c[0]), c[1]))
        if not cells:
            return _untestable(claim, f"no {arm} run")
        groups = []
        for size, lr in cells:
            label = f"{size} LR {_lr(lr)}"
            rows = data.runs(arm, size, lr, statuses)
            if why := _too_small(rows, min_depth, min_steps):
                groups.append(Group(label, UNTESTABLE, note=why))
                continue
            q = _by_seed(rows, fn)
            iv = stats.mean_interval(list(q.values()))
            if iv is None:
                groups.append(Group(label, UNTESTABLE, None, {arm: _mean(q)},
                                    f"{len(q)} seed(s) (needs >= 2)"))
            else:
                groups.append(Group(label, stats.decide(iv, threshold, greater), iv, {arm: _mean(q)}))
        return _conclude(claim, groups, "no cell passed the preconditions")

    return evaluate_claim


def _learned_post(data: Data) -> str | None:
    post = [r for r in data.rows if r["arm"] == "post_ln"]
    if not post:
        return "no post_ln run"
    learned = [r for r in post if r["status"] == FINISHED]
    if not learned:
        failed = sum(r["status"] == FAILED_TO_LEARN for r in post)
        return (f"no Post-LN run learned ({failed}/{len(post)} failed to learn, the rest diverged or "
                "unfinished): vanishing gradients are read on runs that learned")
    return None


def no_divergence(claim: Claim, data: Data) -> Result:
    """Counts: at every (size, LR) where a Pre-LN seed diverged, how many Peri-LN seeds did."""
    groups, any_pre = [], False
    for size, lr in data.matched_cells("pre_ln", "peri_ln"):
        pre = data.runs("pre_ln", size, lr, (*USABLE, DIVERGED))
        peri = data.runs("peri_ln", size, lr, (*USABLE, DIVERGED))
        k_pre, k_peri = sum(r["status"] == DIVERGED for r in pre), sum(r["status"] == DIVERGED for r in peri)
        label = f"{size} LR {_lr(lr)}"
        means = {"pre_ln diverged": k_pre, "pre_ln runs": len(pre), "peri_ln diverged": k_peri,
                 "peri_ln runs": len(peri)}
        if not k_pre:
            groups.append(Group(label, UNTESTABLE, None, means, f"Pre-LN 0/{len(pre)} diverged"))
            continue
        any_pre = True
        verdict = HOLDS if k_peri == 0 else (FAILS if k_peri / max(1, len(peri)) >= k_pre / len(pre)
                                              else INCONCLUSIVE)
        groups.append(Group(label, verdict, None, means,
                            f"pre_ln {k_pre}/{len(pre)}, peri_ln {k_peri}/{len(peri)}"))
    if not groups:
        return _untestable(claim, "no (size, LR) cell where both pre_ln and peri_ln ran")
    if not any_pre:
        return _untestable(claim, "Pre-LN never diverged at an LR where Peri-LN also ran: not provoked",
                           groups)
    return Result(claim, stats.combine([g.verdict for g in groups if g.verdict != UNTESTABLE]), tuple(groups))


def post_fails_at_depth(claim: Claim, data: Data) -> Result:
    """Counts of Post-LN runs that failed to learn (or diverged), deep (>= MIN_DEPTH) vs shallow."""
    post = [r for r in data.rows if r["placement"] == "post_ln" and r["status"] in (*USABLE, DIVERGED)]
    deep = [r for r in post if (_depth([r]) or 0) >= MIN_DEPTH]
    shallow = [r for r in post if r not in deep and _depth([r]) is not None]
    if not deep:
        return _untestable(claim, f"no Post-LN run with >= {MIN_DEPTH} layers (n_layers recorded)")
    k = sum(r["status"] in (FAILED_TO_LEARN, DIVERGED) for r in deep)
    ks = sum(r["status"] in (FAILED_TO_LEARN, DIVERGED) for r in shallow)
    means = {"deep failed": k, "deep runs": len(deep), "shallow failed": ks, "shallow runs": len(shallow)}
    note = f"deep {k}/{len(deep)} failed to learn or diverged" + (f", shallow {ks}/{len(shallow)}"
                                                                   if shallow else "")
    verdict = HOLDS if k == len(deep) else (FAILS if k == 0 else INCONCLUSIVE)
    return Result(claim, verdict, (Group("all sizes", verdict, None, means, note),))


def _real_benchmarks(data: Data) -> str | None:
    provs = {str(r.get("benchmark_data") or "") for r in data.rows if paper_avg(r) is not None}
    if not provs:
        return "no run has the five benchmarks' scores"
    if any("synthetic" in p for p in provs):
        return "the benchmarks are synthetic (a wiring check, not the real tasks)"
    if "" in provs:
        return "benchmark provenance unrecorded (runs.csv column benchmark_data)"
    return None


def at_chosen(pairs: Sequence[tuple[str, str, str]], fn: Callable[[dict], float | None], greater: bool,
              precondition: Callable[[Data], str | None] | None = None) -> Callable[[Claim, Data], Result]:
    """Quality claims: for each size and each (a, b, the arm the claim says is better), fn(a) - fn(b)
    paired by seed, each arm at its own chosen LR. A size where one arm has no usable run (every
    run diverged) is decided for the other arm and said so: that is evidence, not a gap."""

    def evaluate_claim(claim: Claim, data: Data) -> Result:
        if precondition is not None and (why := precondition(data)):
            return _untestable(claim, why)
        groups = []
        for size in data.analysis.sizes:
            for a, b, better in pairs:
                label = f"{size}: {a} vs {b}"
                ran = {x: bool(data.analysis.runs(x, size, None, status=None)) for x in (a, b)}
                if not all(ran.values()):
                    continue
                lrs = {x: data.analysis.chosen.get((x, size)) for x in (a, b)}
                gone = [x for x in (a, b) if lrs[x] is None]
                if gone:
                    verdict = UNTESTABLE if len(gone) == 2 else (FAILS if gone == [better] else HOLDS)
                    groups.append(Group(label, verdict, None, {}, f"{' and '.join(gone)}: no usable run "
                                                                  "(every run diverged or is unfinished)"))
                    continue
                qa = _by_seed(data.runs(a, size, lrs[a], USABLE), fn)
                qb = _by_seed(data.runs(b, size, lrs[b], USABLE), fn)
                g = _compare(label, qa, qb, a, b, 0.0, greater)
                note = (g.note + "; " if g.note else "") + f"LR {_lr(lrs[a])} vs {_lr(lrs[b])}"
                groups.append(Group(g.label, g.verdict, g.interval, g.means, note))
        return _conclude(claim, groups, "no size where both arms ran")

    return evaluate_claim


def spread(ratio: float) -> Callable[[Claim, Data], Result]:
    """Seed spread per benchmark at the chosen LRs: std(Peri-LN) / std(Pre-LN) < ratio."""

    def evaluate_claim(claim: Claim, data: Data) -> Result:
        if why := _real_benchmarks(data):
            return _untestable(claim, why)
        groups = []
        for size in data.analysis.sizes:
            lp, lq = data.analysis.chosen.get(("peri_ln", size)), data.analysis.chosen.get(("pre_ln", size))
            if lp is None or lq is None:
                continue
            for task in PAPER_TASKS:
                col = metric_key(task, AVERAGE_METRIC[task])
                a = [v for r in data.runs("peri_ln", size, lp, USABLE)
                     if (v := finite(r.get(col))) is not None]
                b = [v for r in data.runs("pre_ln", size, lq, USABLE)
                     if (v := finite(r.get(col))) is not None]
                label = f"{size} {task}"
                means = {"peri_ln std": statistics.stdev(a) if len(a) > 1 else None,
                         "pre_ln std": statistics.stdev(b) if len(b) > 1 else None}
                iv = stats.std_ratio_interval(a, b)
                if iv is None:
                    groups.append(Group(label, UNTESTABLE, None, means,
                                        f"{len(a)} / {len(b)} seeds (needs >= 2 each, Pre-LN spread > 0)"))
                else:
                    groups.append(Group(label, stats.decide(iv, ratio, greater=False), iv, means))
        return _conclude(claim, groups, "no size with both arms at a chosen LR")

    return evaluate_claim


MATCHED = "matched (size, LR) cells, every LR both arms ran; paired by seed"
CHOSEN = "each arm at its chosen LR (Table 1 rule) per size; paired by seed"
T, F, COUNT = stats.T_METHOD, stats.F_METHOD, stats.COUNT_METHOD

CLAIMS: tuple[Claim, ...] = (
    Claim("massive_abs", "Pre-LN is prone to massive activations (absolute max|x|); Peri-LN is not",
           "paper", "log10 of the largest max|x| of the residual stream over layers, last probe",
           MATCHED + "; only cells where either arm shows a massive activation (Sun et al.)",
           "Pre-LN - Peri-LN > 0", T,
           matched("pre_ln", "peri_ln", _row_fn(log10_peak("diag/maxabs")), 0.0, True,
                   provoked=_massive_somewhere)),
    Claim("massive_ratio", "Pre-LN is prone to massive activations (max / median |x|); Peri-LN is not",
           "paper", "log10 of the largest max|x| / median|x| of the stream over layers, last probe",
           MATCHED + "; only cells where either arm shows a massive activation (Sun et al.)",
           "Pre-LN - Peri-LN > 0", T,
           matched("pre_ln", "peri_ln", _row_fn(log10_peak("diag/max_over_median")), 0.0, True,
                   provoked=_massive_somewhere)),
    Claim("fp16_margin", "Peri-LN keeps a margin below the FP16 maximum (65504) where Pre-LN exceeds it",
           "secondary", "log10(65504 / the run's largest forward activation over all probes)",
           "Peri-LN seeds at the (size, LR) cells where a Pre-LN seed exceeded 65504",
           "Peri-LN margin > 0", T, fp16_margin),
    Claim("var_pre_exponential", "Pre-LN's hidden-state variance grows exponentially with depth, Peri-LN's "
           "does not", "paper",
           "log10(RMSE of a linear / RMSE of a log-linear fit of Var(layer l), l >= 1), both on log Var, "
           "last probe (> 0: exponential fits better)",
           MATCHED + f"; >= {MIN_DEPTH} layers, >= {MIN_STEPS} steps", "Pre-LN - Peri-LN > 0", T,
           matched("pre_ln", "peri_ln", _row_fn(exp_preference), 0.0, True, min_depth=MIN_DEPTH,
                   min_steps=MIN_STEPS)),
    Claim("var_growth_training", "Pre-LN's variance grows during training more than Peri-LN's", "paper",
           "log10(Var of the last layer at the last probe / at the first probe), from curves.csv",
           MATCHED + f"; >= {MIN_DEPTH} layers", "Pre-LN - Peri-LN > 0", T,
           matched("pre_ln", "peri_ln", var_growth_over_training, 0.0, True, min_depth=MIN_DEPTH,
                   min_steps=MIN_STEPS)),
    Claim("var_peri_linear",
          "Peri-LN's variance grows roughly linearly with depth: Var(x_l+1) ≈ Var(x_l) + β0",
           "secondary (formula)", "log10(RMSE linear / RMSE log-linear) of Var(layer l), last probe",
           f"every (size, LR) Peri-LN ran; seeds; >= {MIN_DEPTH} layers, >= {MIN_STEPS} steps",
           "mean < 0 (a line fits better than an exponential)", T,
           one_arm("peri_ln", exp_preference, 0.0, False, min_depth=MIN_DEPTH, min_steps=MIN_STEPS)),
    Claim("var_post_flat", "Post-LN's hidden-state variance stays flat across layers", "secondary",
           "log10(max / min over layers l >= 1 of Var(layer l)), last probe",
           f"every (size, LR) Post-LN ran; seeds; >= {MIN_DEPTH} layers",
           f"mean < log10({FLAT_RATIO:g}) (ours)", T,
           one_arm("post_ln", flatness, math.log10(FLAT_RATIO), False, min_depth=MIN_DEPTH)),
    Claim("grad_steadier_init", "Peri-LN's gradient norms are steadier across layers (at initialization)",
           "paper", "coefficient of variation over blocks of the per-block gradient norm, first probe "
           "(step 0), from curves.csv", MATCHED, "Peri-LN - Pre-LN < 0", T,
           matched("peri_ln", "pre_ln", grad_cv_init, 0.0, False, min_depth=MIN_DEPTH)),
    Claim("grad_steadier_end", "Peri-LN's gradient norms are steadier across layers (end of training)",
           "paper", "coefficient of variation over blocks of the per-block gradient norm, last probe",
           MATCHED + f"; >= {MIN_STEPS} steps", "Peri-LN - Pre-LN < 0", T,
           matched("peri_ln", "pre_ln", _row_fn(grad_cv_end), 0.0, False, min_depth=MIN_DEPTH,
                   min_steps=MIN_STEPS)),
    Claim("post_vanishing", "Post-LN suffers vanishing gradients", "paper",
           "log10(grad norm of block 1 / of the last block), last probe", MATCHED + "; Post-LN runs that "
           "learned (status finished)", "Post-LN - Peri-LN < 0", T,
           matched("post_ln", "peri_ln", _row_fn(grad_ratio_first_last), 0.0, False, statuses=(FINISHED,),
                   min_depth=MIN_DEPTH, precondition=_learned_post)),
    Claim("fewer_spikes", "Peri-LN has fewer gradient spikes", "paper; secondary for counts",
           "gradient spikes per 1000 steps (diag/spikes / steps)", MATCHED, "Peri-LN - Pre-LN < 0", T,
           matched("peri_ln", "pre_ln", _row_fn(spikes_per_1000), 0.0, False,
                   provoked=lambda _d, ra, rb: None if any((finite(r.get("diag/spikes")) or 0) > 0
                                                           for r in ra + rb) else "no spike in either arm")),
    Claim("no_divergence", "Peri-LN does not diverge where Pre-LN diverges", "paper; secondary for counts",
           "diverged runs", "every (size, LR) where a Pre-LN seed diverged and Peri-LN ran",
           "no Peri-LN seed diverged there", COUNT, no_divergence),
    Claim("post_fails_deep", "Post-LN fails to learn in deep models (400M C4 loss 7.46)",
           "secondary, low confidence", "runs that failed to learn or diverged",
           f"Post-LN runs with >= {MIN_DEPTH} layers (shallower ones shown)", "all deep Post-LN runs failed",
           COUNT, post_fails_at_depth),
    Claim("acc_peri_gt_pre", "Peri-LN scores higher than Pre-LN (5-task average)", "secondary",
           "5-task average accuracy (real benchmarks)", CHOSEN, "Peri-LN - Pre-LN > 0", T,
           at_chosen((("peri_ln", "pre_ln", "peri_ln"),), paper_avg, True, precondition=_real_benchmarks)),
    Claim("acc_post_lowest", "Post-LN scores lowest (400M: 42.45 vs 49.69 / 51.57)", "secondary",
           "5-task average accuracy (real benchmarks)", CHOSEN,
           "Post-LN - Pre-LN < 0 and Post-LN - Peri-LN < 0", T,
           at_chosen((("post_ln", "pre_ln", "pre_ln"), ("post_ln", "peri_ln", "peri_ln")), paper_avg,
                     False, precondition=_real_benchmarks)),
    Claim("std_peri_lt_pre", "Peri-LN varies less across seeds (per benchmark)", "secondary",
           "std over seeds of each benchmark's accuracy (real benchmarks)", CHOSEN + "; per task",
           "std(Peri-LN) / std(Pre-LN) < 1", F, spread(1.0)),
    Claim("std_halved", "Seed-to-seed std \"reduced by more than half\" with Peri-LN (per benchmark)",
           "secondary", "std over seeds of each benchmark's accuracy (real benchmarks)",
           CHOSEN + "; per task", "std(Peri-LN) / std(Pre-LN) < 0.5", F, spread(0.5)),
    Claim("loss_peri_lt_pre", "Peri-LN reaches a lower validation loss (C4, 400M: 3.34 vs 3.43)",
           "secondary, low confidence", "final validation loss (nats/token)", CHOSEN,
           "Peri-LN - Pre-LN < 0", T,
           at_chosen((("peri_ln", "pre_ln", "peri_ln"),), lambda r: finite(r.get("val_loss")), False)),
    # the loss claim again in a unit free of the tokenizer (ours: the paper reports nats per token)
    Claim("bpb_peri_lt_pre", "Peri-LN reaches a lower validation loss, in bits per byte (ours: the "
          "paper reports nats/token)", "secondary, low confidence", "final validation bits per UTF-8 byte",
          CHOSEN,
          "Peri-LN - Pre-LN < 0", T,
          at_chosen((("peri_ln", "pre_ln", "peri_ln"),), lambda r: finite(r.get("val_bpb")), False)),
)


def evaluate(analysis: Analysis, curves: Curves | None = None) -> list[Result]:
    data = Data(analysis, curves)
    return [c.evaluate(data) for c in CLAIMS]


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:.6g}" if math.isfinite(x) else str(x)


CSV_COLUMNS = ("id", "claim", "tag", "quantity", "compares", "threshold", "method", "group", "n", "estimate",
               "ci_low", "ci_high", "p_sign_flip", "means", "verdict", "reason")


def csv_rows(results: Sequence[Result]) -> list[list[str]]:
    """claims.csv: one 'overall' row per claim, then one row per compared group (every number behind
    each verdict)."""
    out = []
    for res in results:
        c = res.claim
        head = [c.id, c.claim, c.tag, c.quantity, c.compares, c.threshold, res.method]
        out.append(head + ["overall", "", "", "", "", "", "", res.verdict, res.reason])
        for g in res.groups:
            iv = g.interval
            means = "; ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in g.means.items())
            out.append(head + [g.label, str(iv.n) if iv else "", _fmt(iv.estimate if iv else None),
                               _fmt(iv.low if iv else None), _fmt(iv.high if iv else None),
                               _fmt(iv.p if iv else None), means, g.verdict, g.note])
    return out


def evidence(res: Result) -> str:
    """One line of the groups' numbers for the Markdown table."""
    parts = []
    for g in res.groups:
        iv = g.interval
        if iv is not None:
            parts.append(f"{g.label}: {iv.estimate:+.3g} [{iv.low:+.3g}, {iv.high:+.3g}] n={iv.n}"
                         + ("" if g.verdict == HOLDS else f" ({g.verdict})"))
        elif g.note:
            parts.append(f"{g.label}: {g.note}")
    return "; ".join(parts) if parts else res.reason

"""The paper's claims (PAPER.md section 2), each a test on the runs with a verdict: holds, does not
hold, or not measured (the runs lack the placements or metrics the test needs). suite.tables renders
them."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from suite.analysis import DASH, Analysis, col, finite, layer_profile, paper_avg
from suite.records import DIVERGED, USED

FP16_MAX = 65504.0  # largest finite float16

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured"


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str  # as PAPER.md section 2 states it
    tag: str  # its confidence tag there
    test: str  # the test on our data, stated
    check: Callable[[Analysis], tuple[str, str]]  # -> (verdict, the numbers)


def _per_size(a: Analysis, arms: Sequence[str], value: Callable[[Analysis, str, str], float | None],
              ok: Callable[[list[float]], bool], fmt: Callable[[float], str]) -> tuple[str, str]:
    """Apply `ok` to the arms' values at every size where all are measured."""
    parts, verdicts = [], []
    for size in a.sizes:
        vals = [value(a, arm, size) for arm in arms]
        if any(v is None for v in vals):
            continue
        good = ok(vals)
        verdicts.append(good)
        parts.append(f"{size}: " + " vs ".join(f"{arm} {fmt(v)}" for arm, v in zip(arms, vals))
                     + ("" if good else " ✗"))
    if not verdicts:
        return NOT_MEASURED, f"not measured for {' and '.join(arms)} at any size"
    return (HOLDS if all(verdicts) else FAILS), "; ".join(parts)


def lt(x: float, y: float) -> bool:
    """x < y beyond float noise (relative 1e-9): two seeds' stds that print alike are not "less"."""
    return x < y - 1e-9 * max(abs(x), abs(y))


def le(x: float, y: float) -> bool:
    return not lt(y, x)


def _mean_of(fn: Callable[[dict], float | None]) -> Callable[[Analysis, str, str], float | None]:
    return lambda a, arm, size: a.stat(arm, size, fn).mean


def _std_of(fn: Callable[[dict], float | None]) -> Callable[[Analysis, str, str], float | None]:
    return lambda a, arm, size: a.stat(arm, size, fn).std


def _layers(family: str, reduce: Callable[[list[float]], float | None], first: int = 1):
    """A per-(arm, size) number from the layer profile at the chosen LR: `reduce` gets the values of
    layers >= `first` in order."""

    def value(a: Analysis, arm: str, size: str) -> float | None:
        prof = a.profile(arm, size, family)
        vals = [prof[k] for k in sorted(prof) if k >= first]
        return reduce(vals) if len(vals) >= 2 else None

    return value


def _ratio_last_first(vals: list[float]) -> float | None:
    return vals[-1] / vals[0] if vals[0] > 0 else None


def _linear_r2(vals: list[float]) -> float | None:
    if len(vals) < 3:
        return None
    xs = list(range(len(vals)))
    mx, my = statistics.fmean(xs), statistics.fmean(vals)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, vals))
    syy = sum((y - my) ** 2 for y in vals)
    return 1.0 if syy == 0 else sxy * sxy / (sxx * syy)


def _max_over_min(vals: list[float]) -> float | None:
    return max(vals) / min(vals) if min(vals) > 0 else None


def _cv(vals: list[float]) -> float | None:
    m = statistics.fmean(vals)
    return statistics.pstdev(vals) / m if m > 0 else None


def _sum_all_lrs(name: str) -> Callable[[Analysis, str, str], float | None]:
    """Total of a counter over every finished or diverged run of (arm, size), all LRs."""

    def value(a: Analysis, arm: str, size: str) -> float | None:
        runs = a.runs(arm, size, status=None)
        vals = [finite(r.get(name)) for r in runs if r["status"] in (USED, DIVERGED)]
        vals = [v for v in vals if v is not None]
        return sum(vals) if vals else None

    return value


def _spikes(a: Analysis) -> tuple[str, str]:
    verdict, numbers = _per_size(a, ("peri_ln", "pre_ln"), _sum_all_lrs("diag/spikes"),
                                 lambda v: le(v[0], v[1]), lambda v: f"{v:.0f}")
    if verdict == HOLDS and all(_sum_all_lrs("diag/spikes")(a, arm, s) in (0, None)
                                for s in a.sizes for arm in ("peri_ln", "pre_ln")):
        return NOT_MEASURED, f"no spike in either placement ({numbers})"
    return verdict, numbers


def _no_divergence(a: Analysis) -> tuple[str, str]:
    where, parts, ok = [], [], True
    for size in a.sizes:
        for lr in a.lrs("pre_ln", size):
            pre_div, pre_n = a.counts("pre_ln", size, lr)
            if not pre_div or ("peri_ln", size, lr) not in a.cells:
                continue
            peri_div, peri_n = a.counts("peri_ln", size, lr)
            where.append((size, lr))
            ok &= peri_div == 0
            parts.append(f"{size} LR {lr:g}: pre_ln {pre_div}/{pre_n} diverged, peri_ln {peri_div}/{peri_n}")
    if not where:
        totals = ", ".join(f"{s}: pre_ln {a.counts('pre_ln', s)[0]}/{a.counts('pre_ln', s)[1]}"
                           for s in a.sizes if a.runs("pre_ln", s, status=None))
        return NOT_MEASURED, "Pre-LN never diverged at an LR where Peri-LN also ran" + (f" ({totals})"
                                                                                       if totals else "")
    return (HOLDS if ok else FAILS), "; ".join(parts)


def _fp16_margin(a: Analysis) -> tuple[str, str]:
    parts, ok, seen = [], True, False
    for size in a.sizes:
        for arm in ("peri_ln", "pre_ln"):
            runs = [r for r in a.runs(arm, size, status=None) if r["status"] in (USED, DIVERGED)]
            peaks = [max(layer_profile(r, "diag/maxabs").values(), default=None) for r in runs]
            peaks = [p for p in peaks if p is not None]
            over = [finite(r.get("diag/fp16_overflow")) for r in runs]
            over = [v for v in over if v is not None]
            if not peaks and not over:
                continue
            if arm == "peri_ln":
                seen = True
                ok &= all(p < FP16_MAX for p in peaks) and not any(over)
            peak = f"{max(peaks):.3g}" if peaks else DASH
            parts.append(f"{size} {arm}: max|x| {peak}")
            if over:
                parts[-1] += f", fp16 overflows {sum(over):.0f}"
    if not seen:
        return NOT_MEASURED, "no Peri-LN run recorded diag/maxabs or diag/fp16_overflow"
    return (HOLDS if ok else FAILS), "; ".join(parts)


CLAIMS: tuple[Claim, ...] = (
    Claim("acc_peri_ge_pre", "Peri-LN scores higher than Pre-LN (5-task average)", "secondary",
          "Peri-LN 5-task mean ≥ Pre-LN's at every size (chosen LRs)",
          lambda a: _per_size(a, ("peri_ln", "pre_ln"), _mean_of(paper_avg), lambda v: le(v[1], v[0]),
                              lambda v: f"{100 * v:.2f}")),
    Claim("acc_post_lowest", "Post-LN scores lowest (400M: 42.45 vs 49.69 / 51.57)", "secondary",
          "Post-LN 5-task mean < Pre-LN's and < Peri-LN's at every size",
          lambda a: _per_size(a, ("post_ln", "pre_ln", "peri_ln"), _mean_of(paper_avg),
                              lambda v: lt(v[0], v[1]) and lt(v[0], v[2]), lambda v: f"{100 * v:.2f}")),
    Claim("std_peri_lt_pre", "Peri-LN varies less across seeds", "secondary",
          "std over seeds of the 5-task average: Peri-LN < Pre-LN at every size (≥ 2 seeds each)",
          lambda a: _per_size(a, ("peri_ln", "pre_ln"), _std_of(paper_avg), lambda v: lt(v[0], v[1]),
                              lambda v: f"{100 * v:.2f}")),
    Claim("std_halved", "Seed-to-seed std \"reduced by more than half\" with Peri-LN", "secondary",
          "std over seeds of the 5-task average: Peri-LN < 0.5 × Pre-LN at every size",
          lambda a: _per_size(a, ("peri_ln", "pre_ln"), _std_of(paper_avg), lambda v: lt(v[0], 0.5 * v[1]),
                              lambda v: f"{100 * v:.2f}")),
    Claim("loss_peri_lt_pre", "Peri-LN reaches a lower eval loss (C4, 400M: 3.34 vs 3.43)",
          "secondary, low confidence", "mean final eval loss: Peri-LN < Pre-LN at every size",
          lambda a: _per_size(a, ("peri_ln", "pre_ln"), _mean_of(col("eval_loss")), lambda v: lt(v[0], v[1]),
                              lambda v: f"{v:.3f}")),
    Claim("var_pre_growth", "Pre-LN hidden-state variance grows sharply with depth, Peri-LN's slowly",
          "paper", "Var(last layer) / Var(layer 1) of the residual stream at the last probe (diag/var): "
          "Pre-LN > Peri-LN at every size",
          lambda a: _per_size(a, ("pre_ln", "peri_ln"), _layers("diag/var", _ratio_last_first),
                              lambda v: lt(v[1], v[0]), lambda v: f"{v:.3g}x")),
    Claim("var_peri_linear", "Peri-LN variance grows roughly linearly: Var(x_l+1) ≈ Var(x_l) + β0",
          "secondary", "R² of a straight line through Peri-LN's Var(layer l), l ≥ 1: ≥ 0.9 (our "
          "threshold) at every size",
          lambda a: _per_size(a, ("peri_ln",), _layers("diag/var", _linear_r2), lambda v: v[0] >= 0.9,
                              lambda v: f"R² {v:.3f}")),
    Claim("var_post_flat", "Post-LN hidden-state variance stays flat across layers", "paper",
          "max / min over layers l ≥ 1 of Post-LN's Var(layer l) ≤ 2 (our threshold) at every size",
          lambda a: _per_size(a, ("post_ln",), _layers("diag/var", _max_over_min), lambda v: v[0] <= 2.0,
                              lambda v: f"{v:.3g}x")),
    Claim("maxabs_pre_growth", "Pre-LN is prone to massive activations", "paper",
          "max|x|(last layer) / max|x|(layer 1) at the last probe (diag/maxabs): Pre-LN > Peri-LN at "
          "every size",
          lambda a: _per_size(a, ("pre_ln", "peri_ln"), _layers("diag/maxabs", _ratio_last_first),
                              lambda v: lt(v[1], v[0]), lambda v: f"{v:.3g}x")),
    Claim("fp16_margin", "Peri-LN keeps a margin below the FP16 maximum (65504)", "paper; secondary "
          "for FP16 details", "every finished or diverged Peri-LN run: max over layers of max|x| < 65504 "
          "and diag/fp16_overflow = 0 (Pre-LN shown for reference)", _fp16_margin),
    Claim("grad_steadier", "Peri-LN has steadier gradient norms across layers", "paper",
          "coefficient of variation (std / mean) over blocks of the per-block gradient norm at the last "
          "probe (diag/grad_norm): Peri-LN < Pre-LN at every size",
          lambda a: _per_size(a, ("peri_ln", "pre_ln"), _layers("diag/grad_norm", _cv, first=0),
                              lambda v: lt(v[0], v[1]), lambda v: f"{v:.3f}")),
    Claim("post_vanishing", "Post-LN suffers vanishing gradients", "paper",
          "grad norm of the first block / the last block (diag/grad_norm): Post-LN < Peri-LN at every "
          "size (smaller = the bottom of the stack receives less gradient)",
          lambda a: _per_size(a, ("post_ln", "peri_ln"), _layers("diag/grad_norm",
                              lambda v: v[0] / v[-1] if v[-1] > 0 else None, first=0),
                              lambda v: lt(v[0], v[1]), lambda v: f"{v:.3g}")),
    Claim("fewer_spikes", "Peri-LN has fewer gradient spikes", "paper; secondary for counts",
          "total diag/spikes over every finished or diverged run, all LRs: Peri-LN ≤ Pre-LN at every "
          "size (none in either: not measured)", _spikes),
    Claim("no_divergence", "Peri-LN does not diverge where Pre-LN diverges", "paper; secondary for "
          "counts", "at every (size, LR) where a Pre-LN seed diverged, no Peri-LN seed diverged",
          _no_divergence),
)

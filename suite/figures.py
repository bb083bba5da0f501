"""Figures from the tidy CSVs (runs.csv, curves.csv; see suite/records.py), PNG and PDF.

- loss_curves: train and val loss against step, per placement at its chosen LR (the Table 1 rule),
  mean over the finished seeds with a min-max band;
- loss_vs_lr: final val loss against LR per placement, mean ± std over finished seeds, diverged
  seeds marked;
- layer_variance / layer_maxabs / layer_max_over_median / layer_grad_norm: the per-layer
  diagnostics at the last probe, per placement at its chosen LR, mean over seeds (only when the runs
  logged them);
- depth_over_training: the last layer's variance and max |x| against step (from curves.csv).

Like the tables, figures never need MLflow, and rebuilding them from the same CSVs gives the same
files (no timestamps in the PDF, Agg backend, fixed sizes).
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogFormatter, MaxNLocator, NullLocator  # noqa: E402

from suite.analysis import ARM_ORDER, Analysis, Stat, finite  # noqa: E402
from suite.records import read_curves, read_runs  # noqa: E402

# what each figure shows, for captions outside the figure (the report); the rules are suite.analysis's
CAPTIONS = {
    "loss_curves": "Train and val loss against step per placement at its chosen LR (the Table 1 rule): "
                   "mean over the finished seeds, band = min-max.",
    "loss_vs_lr": "Final val loss against peak LR per placement: mean ± std over the finished seeds; "
                  "x on the top edge = diverged seeds (k of n).",
    "layer_variance": "Hidden-state variance per layer (0 = embedding output) at the last probe: chosen "
                      "LR, mean over finished seeds.",
    "layer_maxabs": "Max |activation| per layer at the last probe: chosen LR, mean over finished seeds.",
    "layer_max_over_median": "Max / median |activation| per layer at the last probe: chosen LR, mean over "
                             "finished seeds.",
    "layer_grad_norm": "Gradient norm per block at the last probe: chosen LR, mean over finished seeds.",
    "depth_over_training": "Variance and max |activation| of the last layer against step: chosen LR, mean "
                           "and min-max over seeds.",
}
LAYER_FIGURES = (
    # (file stem, metric family, y label, log scale)
    ("layer_variance", "diag/var", "hidden-state variance", True),
    ("layer_maxabs", "diag/maxabs", "max |activation|", True),
    ("layer_max_over_median", "diag/max_over_median", "max / median |activation|", True),
    ("layer_grad_norm", "diag/grad_norm", "gradient norm", True),
)


def _colors(a: Analysis) -> dict[str, Any]:
    """The paper's three placements keep their colours in every figure; other arms follow."""
    cmap = plt.get_cmap("tab10")
    others = [arm for arm in a.arms() if arm not in ARM_ORDER]
    return {arm: cmap((ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER) + others.index(arm)) % 10)
            for arm in a.arms()}


def _panels(n: int, rows: int = 1, width: float = 4.2, height: float = 3.3):
    # at least 7 inches wide so the suptitle of a one-panel figure fits
    fig, axes = plt.subplots(rows, n, figsize=(max(width * n, 7.0), height * rows), squeeze=False)
    return fig, axes


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig.tight_layout()
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        path = out_dir / f"{stem}.{ext}"
        fig.savefig(path, dpi=120, metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths


def _log_y(ax) -> None:
    """Log y axis with plain tick labels (0.3, 20) rather than 3 x 10^-1, minor ticks labelled
    where the axis spans under two decades."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLog())
    ax.yaxis.set_minor_formatter(_PlainLog(minor_thresholds=(2, 0.5)))


class _PlainLog(LogFormatter):
    """matplotlib's choice of which log ticks to label, printed as plain numbers (0.2, 30)."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def _mean_band(series: list[tuple[list[int], list[float]]]):
    """Per step: mean, min and max over the seeds that logged that step."""
    by_step: dict[int, list[float]] = {}
    for steps, values in series:
        for s, v in zip(steps, values):
            if finite(v) is not None:
                by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    return (steps, [statistics.fmean(by_step[s]) for s in steps], [min(by_step[s]) for s in steps],
            [max(by_step[s]) for s in steps])


def loss_curves(a: Analysis, curves: dict, out_dir: Path) -> list[Path]:
    metrics = [(m, label) for m, label in (("train/loss", "train loss"), ("val/loss", "val loss"))
               if any(m in c for c in curves.values())]
    if not metrics or not a.sizes:
        return []
    colors = _colors(a)
    fig, axes = _panels(len(metrics), rows=len(a.sizes))
    for i, size in enumerate(a.sizes):
        for j, (metric, label) in enumerate(metrics):
            ax = axes[i][j]
            for arm in a.arms(size):
                runs = a.at_chosen(arm, size)
                series = [curves[r["key"]][metric] for r in runs if metric in curves.get(r["key"], {})]
                if not series:
                    continue
                steps, mean, lo, hi = _mean_band(series)
                lr = a.chosen[(arm, size)]
                ax.plot(steps, mean, color=colors[arm], lw=1.4,
                        label=f"{a.title(arm)} (LR {lr:g}, n={len(series)})")
                ax.fill_between(steps, lo, hi, color=colors[arm], alpha=0.2, lw=0)
            ax.set_title(f"{label}, size {size}", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.margins(y=0.12)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle("Loss per placement at its chosen LR: mean over finished seeds, band = min-max", fontsize=10)
    return _save(fig, out_dir, "loss_curves")


def loss_vs_lr(a: Analysis, out_dir: Path) -> list[Path]:
    if not a.sizes:
        return []
    colors = _colors(a)
    fig, axes = _panels(len(a.sizes))
    for ax, size in zip(axes[0], a.sizes):
        metric = "val_loss"
        top = []
        for arm in a.arms(size):
            metric = a.select_metric[(arm, size)]
            xs, ys, errs, div_x = [], [], [], []
            for lr in a.lrs(arm, size):
                st = Stat.of(finite(r.get(metric)) for r in a.runs(arm, size, lr))
                div, n = a.counts(arm, size, lr)
                if st.mean is not None:
                    xs.append(lr)
                    ys.append(st.mean)
                    errs.append(st.std or 0.0)
                    top.append(st.mean)
                if div:
                    div_x.append((lr, div, n))
            if xs:
                ax.errorbar(xs, ys, yerr=errs, color=colors[arm], marker="o", ms=4, capsize=3, lw=1.4,
                            label=a.title(arm))
            for lr, div, n in div_x:
                # diverged seeds: an x on the panel's top edge, labelled k/n
                ax.plot([lr], [0.95], marker="x", color=colors[arm], ms=8, mew=2,
                        transform=ax.get_xaxis_transform())
                ax.annotate(f"{a.title(arm)} {div}/{n} diverged", (lr, 0.95),
                            xycoords=ax.get_xaxis_transform(), xytext=(-6, -4), textcoords="offset points",
                            fontsize=7, color=colors[arm],
                            ha="right", va="top")
        ax.set_xscale("log")
        lrs = a.lrs(size=size)
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])  # the grid's own values, not powers of ten
        ax.xaxis.set_minor_locator(NullLocator())
        ax.margins(x=0.15, y=0.2)
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel(f"final {metric.replace('_', ' ')}")
        ax.set_title(f"size {size}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("Final loss against LR: mean ± std over finished seeds; x = diverged seeds (k of n)",
                 fontsize=10)
    return _save(fig, out_dir, "loss_vs_lr")


def layer_figure(a: Analysis, out_dir: Path, stem: str, family: str, ylabel: str, log: bool) -> list[Path]:
    sizes = [s for s in a.sizes if any(a.profile(arm, s, family) for arm in a.arms(s))]
    if not sizes:
        return []
    colors = _colors(a)
    fig, axes = _panels(len(sizes))
    for ax, size in zip(axes[0], sizes):
        for arm in a.arms(size):
            prof = a.profile(arm, size, family)
            if not prof:
                continue
            layers = sorted(prof)
            n = len(a.at_chosen(arm, size))
            ax.plot(layers, [prof[k] for k in layers], color=colors[arm], marker="o", ms=3, lw=1.4,
                    label=f"{a.title(arm)} (LR {a.chosen[(arm, size)]:g}, n={n})")
        if log:
            _log_y(ax)
        unit = "block" if family.endswith("grad_norm") else "layer (0 = embedding output)"
        ax.set_xlabel(unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(f"size {size}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    per = "block" if family.endswith("grad_norm") else "layer"
    fig.suptitle(f"{ylabel.capitalize()} per {per} at the last probe: chosen LR, mean over finished seeds",
                 fontsize=10)
    return _save(fig, out_dir, stem)


def _last_layer_metric(curves_of_run: dict[str, Any], family: str) -> str | None:
    pat = re.compile(rf"^{re.escape(family)}/layer_(\d+)$")
    found = sorted((int(m.group(1)), name) for name in curves_of_run if (m := pat.match(name)))
    return found[-1][1] if found else None


def depth_over_training(a: Analysis, curves: dict, out_dir: Path) -> list[Path]:
    families = [(f, label) for f, label in (("diag/var", "variance"), ("diag/maxabs", "max |activation|"))
                if any(_last_layer_metric(c, f) for c in curves.values())]
    if not families:
        return []
    colors = _colors(a)
    fig, axes = _panels(len(families), rows=len(a.sizes))
    for i, size in enumerate(a.sizes):
        for j, (family, label) in enumerate(families):
            ax = axes[i][j]
            for arm in a.arms(size):
                series = []
                for r in a.at_chosen(arm, size):
                    c = curves.get(r["key"], {})
                    name = _last_layer_metric(c, family)
                    if name:
                        series.append(c[name])
                if not series:
                    continue
                steps, mean, lo, hi = _mean_band(series)
                ax.plot(steps, mean, color=colors[arm], lw=1.4, marker="o", ms=3, label=a.title(arm))
                ax.fill_between(steps, lo, hi, color=colors[arm], alpha=0.2, lw=0)
            _log_y(ax)
            ax.set_xlabel("step")
            ax.set_ylabel(f"last layer {label}")
            ax.set_title(f"{label} of the last layer, size {size}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle("Top of the residual stream during training: chosen LR, mean and min-max over seeds",
                 fontsize=10)
    return _save(fig, out_dir, "depth_over_training")


def build(runs_csv: str | Path, out_dir: str | Path, curves_csv: str | Path | None = None) -> list[Path]:
    """runs.csv (+ curves.csv beside it, or the one given) -> figures in out_dir; returns the files."""
    runs_csv, out_dir = Path(runs_csv), Path(out_dir)
    rows = read_runs(runs_csv)
    curves = read_curves(curves_csv or runs_csv.with_name("curves.csv"))
    a = Analysis(rows)
    plt.rcParams.update({"figure.max_open_warning": 0, "svg.hashsalt": "periln"})
    out = loss_curves(a, curves, out_dir) + loss_vs_lr(a, out_dir)
    for stem, family, label, log in LAYER_FIGURES:
        out += layer_figure(a, out_dir, stem, family, label, log)
    out += depth_over_training(a, curves, out_dir)
    return out


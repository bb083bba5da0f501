"""Tables from the records: MLflow -> runs.csv (+ curves.csv) -> Markdown, LaTeX and CSV tables.

Two tidy files are the interface between the records and everything built from them; both are
results in their own right, and `periln tables --from-csv runs.csv` rebuilds every table and figure
from them without MLflow:

- `runs.csv`: one row per run. Leading columns RUN_COLUMNS (identity, status, provenance, final
  train/eval loss), then every other final metric of the run, sorted by name (`eval/<task>/<metric>`,
  `diag/var/layer_03`, `diag/spikes`, ...). Empty cell = not recorded.
- `curves.csv`: one row per logged point, columns CURVE_COLUMNS (key, metric, step, value), for the
  figures (loss curves).

The rules (also printed in every caption):
- LR_RULE: which learning rate represents a placement at a size;
- DIVERGENCE_RULE: what happens to diverged seeds;
- mean ± std over seeds is the sample standard deviation (n - 1), blank for n = 1.

Rebuilding from the same runs.csv gives byte-identical files: no clock, no absolute path, stable
sorting, fixed float formatting; the header's commit is the one recorded in the runs (or passed in),
never the checkout that happens to rebuild them.

Only suite/tracking.py imports mlflow; `export` asks it for the runs.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.tasks import AVERAGE_METRIC, PAPER_TASKS, metric_key
from models import SIZES, ConfigError

# ------------------------------------------------------------------------------------------ schema

RUN_COLUMNS: tuple[str, ...] = (
    "key", "sweep", "arm", "placement", "placement_args", "variant", "size", "lr", "seed",
    "status", "diverged_step", "step", "embed_norm", "tokenizer", "data_source", "eval_source",
    "commit", "dirty", "train_loss", "eval_loss", "tokens_per_s",
)
CURVE_COLUMNS: tuple[str, ...] = ("key", "metric", "step", "value")
INT_COLUMNS = ("seed", "diverged_step", "step")
FLOAT_COLUMNS = ("lr", "train_loss", "eval_loss", "tokens_per_s")
# metrics mapped onto the leading columns (their final values) rather than repeated under their name
FINAL_ALIASES = {"train/loss": "train_loss", "val/loss": "eval_loss", "train/tokens_per_s": "tokens_per_s"}

USED = "finished"  # the only status whose numbers enter means
DIVERGED = "diverged"

TASK_LABELS = {"arc_easy": "ARC-Easy", "hellaswag": "HellaSwag", "piqa": "PIQA", "social_iqa": "SIQA",
               "winogrande": "Winogrande"}
ARM_ORDER = ("post_ln", "pre_ln", "peri_ln")  # the paper's order; other arms follow, sorted
FP16_MAX = 65504.0  # largest finite float16

LR_RULE = ("LR chosen per (placement, size): among the learning rates with no diverged seed, the one "
           "with the lowest mean final eval loss over its seeds (ties: the smaller LR); if every LR has "
           "a diverged seed, the one with the fewest, then the lowest mean eval loss. Final train loss "
           "stands in where no run of that placement and size recorded an eval loss.")
DIVERGENCE_RULE = ("Diverged seeds are kept and shown as k/n diverged (n = finished + diverged seeds "
                   "at that LR); they are excluded from mean ± std. Failed and unfinished runs are "
                   "excluded and counted in the note below the table.")
STD_RULE = "mean ± std over seeds (sample std, n - 1; no std when n = 1)."


# --------------------------------------------------------------------------------------- reading

def _num(text: str, where: str) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected a number; got {text!r}") from None


def read_runs(path: str | Path) -> list[dict[str, Any]]:
    """runs.csv -> one dict per run: identity columns as str/int/float, metrics as float or None."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (export one with `periln tables SWEEP`)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(line for line in fh if not line.startswith("#"))
        required = ("key", "arm", "size", "lr", "seed", "status")
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; expected runs.csv columns "
                              f"{', '.join(RUN_COLUMNS)}")
        rows = []
        for i, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            for col, text in raw.items():
                text = text or ""
                where = f"{path.name} line {i}, column {col}"
                if col in INT_COLUMNS:
                    v = _num(text, where)
                    row[col] = None if v is None else int(v)
                elif col in FLOAT_COLUMNS or "/" in col or col.startswith("lr-"):
                    row[col] = _num(text, where)
                else:
                    row[col] = text
            if row.get("lr") is None or row.get("seed") is None:
                raise ConfigError(f"{path.name} line {i}: lr and seed are required")
            rows.append(row)
    return rows


def read_curves(path: str | Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """curves.csv -> {key: {metric: (steps, values)}}, steps ascending."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        for raw in csv.DictReader(line for line in fh if not line.startswith("#")):
            out.setdefault(raw["key"], {}).setdefault(raw["metric"], []).append(
                (int(float(raw["step"])), float(raw["value"])))
    return {k: {m: ([s for s, _ in sorted(pts)], [v for _, v in sorted(pts)]) for m, pts in ms.items()}
            for k, ms in out.items()}


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form: stable and lossless
    return str(v)


def write_runs_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write runs.csv: RUN_COLUMNS, then every other column present, sorted; rows sorted by key."""
    extra = sorted({c for r in rows for c in r} - set(RUN_COLUMNS))
    cols = [*RUN_COLUMNS, *extra]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in sorted(rows, key=lambda r: str(r["key"])):
        w.writerow([_csv_value(r.get(c)) for c in cols])
    return _write(Path(path), buf.getvalue())


def write_curves_csv(points: Iterable[tuple[str, str, int, float]], path: str | Path) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CURVE_COLUMNS)
    for key, metric, step, value in sorted(points, key=lambda p: (p[0], p[1], p[2])):
        w.writerow([key, metric, int(step), _csv_value(float(value))])
    return _write(Path(path), buf.getvalue())


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------- MLflow -> CSVs

def _fmt_g(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One exported record (tracking.export_runs) -> one runs.csv row."""
    params, tags, metrics = run.get("params", {}), run.get("tags", {}), run.get("metrics", {})

    def get(name: str, default: Any = None) -> Any:
        for source in (tags, params):
            if source.get(name) not in (None, ""):
                return source[name]
        return default

    placement = str(get("placement", ""))
    size = str(get("size", ""))
    lr = float(get("lr", "nan"))
    seed = int(float(get("seed", 0)))
    key = str(get("run_key") or get("key") or run.get("name") or "")
    args = {k[len("placement_args."):]: v for k, v in params.items() if k.startswith("placement_args.")}
    # the arm: the run key without size, LR and seed (placement, its arguments, any variant)
    mid = f"-{size}-lr{_fmt_g(lr)}-s{seed}"
    at = key.find(mid)
    arm = key[:at] + key[at + len(mid):] if at > 0 else placement
    embed = params.get("model.embed_norm")
    if embed in (None, ""):
        try:
            from models.placements import get_placement

            embed = bool(get_placement(placement).embed_norm)
        except Exception:  # noqa: BLE001 -- an unknown (since removed) placement: not recorded
            embed = None
    else:
        embed = str(embed).lower() == "true"
    diverged_step = get("diverged_step")
    row: dict[str, Any] = dict(
        key=key, sweep=get("sweep", ""), arm=arm, placement=placement,
        placement_args=";".join(f"{k}={v}" for k, v in sorted(args.items())),
        variant=get("variant", ""),
        size=size, lr=lr, seed=seed, status=get("status", ""),
        diverged_step=None if diverged_step in (None, "") else int(float(diverged_step)),
        step=run.get("step"), embed_norm=embed,
        tokenizer=params.get("data.tokenizer", ""), data_source=params.get("data.source", ""),
        eval_source=params.get("data.eval_source", "") if params.get("data.eval_source") != "None" else "",
        commit=get("git_commit") or get("commit") or "", dirty=get("git_dirty") or get("dirty") or "",
    )
    for name, value in metrics.items():
        row[FINAL_ALIASES.get(name, name)] = float(value)
    return row


def export(sweep: str, out_dir: str | Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """The sweep's MLflow runs -> <out_dir>/runs.csv and <out_dir>/curves.csv."""
    from suite import tracking

    runs = tracking.export_runs(sweep, tracking_uri)
    if not runs:
        raise ConfigError(f"no MLflow runs for sweep {sweep!r} in {tracking_uri or 'the default store'}; "
                          "submit it first (periln submit) or pass --from-csv runs.csv")
    rows, points = [], []
    for run in runs:
        row = run_row(run)
        rows.append(row)
        for metric, history in run.get("history", {}).items():
            points.extend((row["key"], metric, int(s), float(v)) for s, v in history)
    out_dir = Path(out_dir)
    return write_runs_csv(rows, out_dir / "runs.csv"), write_curves_csv(points, out_dir / "curves.csv")


# -------------------------------------------------------------------------------------- analysis

def finite(v: Any) -> float | None:
    """v as a float when it is a finite number; None for a missing cell, NaN or inf."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def paper_avg(row: dict[str, Any]) -> float | None:
    """5-task average (fraction) of one run: evals.tasks.AVERAGE_METRIC of each PAPER_TASKS task."""
    values = [finite(row.get(metric_key(t, AVERAGE_METRIC[t]))) for t in PAPER_TASKS]
    return None if any(v is None for v in values) else sum(values) / len(values)


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

    def __post_init__(self) -> None:
        for r in sorted(self.rows, key=lambda r: (str(r["key"]), r["seed"])):
            self.cells.setdefault((r["arm"], r["size"], float(r["lr"])), []).append(r)
        for arm, size in {(a, s) for a, s, _ in self.cells}:
            self.chosen[(arm, size)], self.select_metric[(arm, size)] = self._choose(arm, size)

    # --- structure
    @property
    def sizes(self) -> list[str]:
        return sorted({s for _, s, _ in self.cells}, key=_size_order)

    def arms(self, size: str | None = None) -> list[str]:
        return sorted({a for a, s, _ in self.cells if size in (None, s)}, key=_arm_order)

    def lrs(self, arm: str | None = None, size: str | None = None) -> list[float]:
        return sorted({lr for a, s, lr in self.cells if arm in (None, a) and size in (None, s)})

    def runs(self, arm: str, size: str, lr: float | None = None, status: str | None = USED) -> list[dict]:
        out = []
        for (a, s, r), rows in sorted(self.cells.items()):
            if a == arm and s == size and (lr is None or r == lr):
                out.extend(x for x in rows if status is None or x["status"] == status)
        return out

    def counts(self, arm: str, size: str, lr: float | None = None) -> tuple[int, int]:
        """(diverged, finished + diverged) seeds."""
        fin = len(self.runs(arm, size, lr))
        div = len(self.runs(arm, size, lr, DIVERGED))
        return div, fin + div

    def excluded(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            if r["status"] not in (USED, DIVERGED):
                out[r["status"] or "unknown"] = out.get(r["status"] or "unknown", 0) + 1
        return dict(sorted(out.items()))

    # --- the LR rule
    def _choose(self, arm: str, size: str) -> tuple[float | None, str]:
        metric = "eval_loss" if any(finite(r.get("eval_loss")) is not None
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


# ------------------------------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Cell:
    text: str
    bold: bool = False


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[list[Cell | str]]


@dataclass
class TableSet:
    """One table kind (possibly one section per size) and its CSV form."""

    id: str
    title: str
    caption: str
    sections: list[Section]
    csv_columns: list[str]
    csv_rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)


DASH = "—"


def fnum(x: float | None, nd: int, signed: bool = False) -> str:
    if x is None:
        return DASH
    s = f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"
    return f"{0:.{nd}f}" if float(s) == 0 else s  # never "-0.00" or "+0.00"


def fstat(st: Stat, nd: int, scale: float = 1.0) -> str:
    if st.mean is None:
        return DASH
    text = fnum(st.mean * scale, nd)
    return text if st.std is None else f"{text} ± {fnum(st.std * scale, nd)}"


def fcsv(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def flr(lr: float | None) -> str:
    return DASH if lr is None else f"{lr:g}"


def _md_cell(c: Cell | str) -> str:
    text = (c.text if isinstance(c, Cell) else c).replace("|", "\\|")
    return f"**{text}**" if isinstance(c, Cell) and c.bold and text != DASH else text


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "±": r"$\pm$", "—": "--", "≥": r"$\geq$", "≤": r"$\leq$", "×": r"$\times$", "−": "-",
        "<": r"$<$", ">": r"$>$", "→": r"$\rightarrow$", "|": r"$|$", "β": r"$\beta$", "²": r"$^2$"}


def tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def _tex_cell(c: Cell | str) -> str:
    text = tex(c.text if isinstance(c, Cell) else c)
    return f"\\textbf{{{text}}}" if isinstance(c, Cell) and c.bold else text


def render_markdown(tables: Sequence[TableSet], header: str) -> str:
    out = [f"*{header}*", ""]
    for t in tables:
        out += [f"## {t.title}", "", t.caption, ""]
        for sec in t.sections:
            if sec.title:
                out += [f"### {sec.title}", ""]
            out.append("| " + " | ".join(sec.columns) + " |")
            out.append("|" + "|".join("---" for _ in sec.columns) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in sec.rows]
            out.append("")
        if t.notes:
            out += [*(f"- {n}" for n in t.notes), ""]
    return "\n".join(out)


def render_latex(tables: Sequence[TableSet], header: str) -> str:
    out = [f"% {header}", "% needs \\usepackage{booktabs}", ""]
    for t in tables:
        for sec in t.sections:
            title = t.title + (f" ({sec.title})" if sec.title else "")
            label = re.sub(r"[^a-z0-9]+", "-", f"{t.id} {sec.title}".lower()).strip("-")
            out += ["\\begin{table}[t]", "\\centering", "\\small",
                    f"\\caption{{{tex(title)}. {tex(t.caption)}}}", f"\\label{{tab:{label}}}",
                    "\\begin{tabular}{" + "l" * len(sec.columns) + "}", "\\toprule",
                    " & ".join(tex(c) for c in sec.columns) + " \\\\", "\\midrule"]
            out += [" & ".join(_tex_cell(c) for c in row) + " \\\\" for row in sec.rows]
            out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        out += [f"% {tex(n)}" for n in t.notes]
        if t.notes:
            out.append("")
    return "\n".join(out)


def render_csv(t: TableSet, header: str) -> str:
    buf = io.StringIO()
    buf.write(f"# {header}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.csv_columns)
    w.writerows([[x if isinstance(x, str) else fcsv(x) for x in row] for row in t.csv_rows])
    return buf.getvalue()


# -------------------------------------------------------------------------------------- the tables

METRICS = tuple((TASK_LABELS[t], metric_key(t, AVERAGE_METRIC[t])) for t in PAPER_TASKS)


def _excluded_note(a: Analysis) -> list[str]:
    ex = a.excluded()
    if not ex:
        return []
    return ["Excluded from every table: " + ", ".join(f"{n} {status}" for status, n in ex.items())
            + " run(s)."]


def _embed_note(a: Analysis) -> list[str]:
    """PAPER.md section 1: state Peri-LN's embedding-norm setting wherever it is compared."""
    notes = []
    for arm in a.arms():
        runs = [r for r in a.rows if r["arm"] == arm and r["placement"] in ("peri_ln", "sandwich_ln")]
        vals = sorted({str(r.get("embed_norm") or "unrecorded").lower() for r in runs})
        if vals:
            setting = {"true": "on", "false": "off"}
            notes.append(f"{arm}: embedding norm {' / '.join(setting.get(v, v) for v in vals)}.")
    return notes


def table1(a: Analysis) -> TableSet:
    acc_note = ", ".join(f"{TASK_LABELS[t]} {AVERAGE_METRIC[t]}" for t in PAPER_TASKS)
    caption = (f"The paper's Table 1 layout: accuracy (%) per task ({acc_note}; zero-shot), their "
               f"5-task average, and final eval loss; {STD_RULE} {LR_RULE} {DIVERGENCE_RULE}")
    columns = ["placement", "LR", "diverged", *(m for m, _ in METRICS), "5-task avg", "eval loss"]
    sections, csv_rows = [], []
    for size in a.sizes:
        rows = []
        for arm in a.arms(size):
            lr = a.chosen.get((arm, size))
            div, n = a.counts(arm, size, lr) if lr is not None else a.counts(arm, size)
            stats = [a.stat(arm, size, col(k)) for _, k in METRICS]
            avg = a.stat(arm, size, paper_avg)
            loss = a.stat(arm, size, col("eval_loss"))
            rows.append([arm, flr(lr), f"{div}/{n}", *(fstat(s, 2, 100) for s in stats), fstat(avg, 2, 100),
                         fstat(loss, 3)])
            csv_rows.append([size, arm, fcsv(lr), str(n - div), str(div), str(n),
                             *(x for s in [*stats, avg] for x in (
                                 None if s.mean is None else s.mean * 100,
                                 None if s.std is None else s.std * 100)),
                             loss.mean, loss.std])
        sections.append(Section(f"size {size}", columns, rows))
    metric_cols = [m.lower().replace("-", "_") for m, _ in METRICS] + ["avg5"]
    csv_cols = ["size", "placement", "lr", "seeds_used", "seeds_diverged", "seeds",
                *(f"{m}_{s}" for m in metric_cols for s in ("mean", "std")),
                "eval_loss_mean", "eval_loss_std"]
    return TableSet("table1", "Table 1: downstream accuracy and eval loss", caption, sections, csv_cols,
                    csv_rows, _embed_note(a) + _excluded_note(a))


def lr_table(a: Analysis) -> TableSet:
    caption = ("Learning-rate sensitivity: mean final eval loss over the finished seeds of each "
               "(placement, LR); (k/n div) = k of n seeds diverged, \"diverged\" = all of them; "
               f"bold = the LR chosen for Table 1. {LR_RULE}")
    sections, csv_rows = [], []
    for size in a.sizes:
        lrs = a.lrs(size=size)
        rows = []
        for arm in a.arms(size):
            metric = a.select_metric[(arm, size)]
            row: list[Cell | str] = [arm]
            for lr in lrs:
                runs = a.cells.get((arm, size, lr))
                if runs is None:
                    row.append(DASH)
                    continue
                div, n = a.counts(arm, size, lr)
                st = Stat.of(finite(r.get(metric)) for r in a.runs(arm, size, lr))
                text = "diverged" if n and div == n else fnum(st.mean, 3)
                if div and div < n:
                    text += f" ({div}/{n} div)"
                elif n and div == n:
                    text += f" ({div}/{n})"
                row.append(Cell(text, bold=a.chosen.get((arm, size)) == lr))
                csv_rows.append([size, arm, fcsv(lr), metric, st.mean, st.std, str(st.n), str(div), str(n),
                                 "yes" if a.chosen.get((arm, size)) == lr else "no"])
            rows.append(row)
        sections.append(Section(f"size {size}", ["placement", *(f"LR {flr(lr)}" for lr in lrs)], rows))
    cols = ["size", "placement", "lr", "metric", "mean", "std", "seeds_used", "seeds_diverged", "seeds",
            "chosen"]
    return TableSet("lr_sensitivity", "Learning-rate sensitivity", caption, sections, cols, csv_rows,
                    _excluded_note(a))


# ----------------------------------------------------------------------------- paper comparison

REFERENCE_COLUMNS = ("source", "quantity", "size", "placement", "value", "unit", "confidence", "note")
QUANTITIES: dict[str, tuple[Callable[[dict], float | None], float, int]] = {
    # quantity in paper_reference.csv -> (per-run value, scale to the paper's unit, decimals)
    "5-task average": (paper_avg, 100.0, 2),
    "eval loss": (col("eval_loss"), 1.0, 3),
    "perplexity": (lambda r: None if finite(r.get("eval_loss")) is None else math.exp(r["eval_loss"]),
                   1.0, 2),
}


def read_reference(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (the paper's reference numbers; see results/)")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    for i, r in enumerate(rows, start=2):
        if r.get("quantity") not in QUANTITIES:
            raise ConfigError(f"{path.name} line {i}: quantity {r.get('quantity')!r}; expected one of "
                              f"{', '.join(QUANTITIES)}")
    return rows


def paper_table(a: Analysis, reference: Sequence[dict[str, str]]) -> TableSet:
    caption = ("Ours beside the published numbers (results/paper_reference.csv, with the confidence "
               "tags of PAPER.md: [paper] stated by the paper, [secondary] only in summaries). Ours = "
               "mean ± std over seeds at the LR chosen by the Table 1 rule; \"not run\" = no finished run "
               "of that placement and size in this sweep. Our eval loss (and perplexity = exp of it, per "
               "run) is on the sweep's own eval set and tokenizer (runs.csv columns eval_source, "
               "tokenizer): comparable to the paper's C4 numbers only where both match.")
    columns = ["quantity", "size", "placement", "paper", "confidence", "ours", "seeds", "ours − paper",
               "source"]
    rows, csv_rows = [], []
    for ref in reference:
        fn, scale, nd = QUANTITIES[ref["quantity"]]
        arm, size = ref["placement"], ref["size"]
        st = a.stat(arm, size, fn)
        paper = float(ref["value"])
        ours = None if st.mean is None else st.mean * scale
        diff = None if ours is None else ours - paper
        rows.append([ref["quantity"], size, arm, fnum(paper, nd), ref["confidence"],
                     "not run" if ours is None else fstat(st, nd, scale), str(st.n),
                     fnum(diff, nd, signed=True), ref["source"]])
        csv_rows.append([ref["quantity"], size, arm, paper, ref["confidence"], ours,
                         None if st.std is None else st.std * scale, str(st.n), diff, ref["source"]])
    sizes_ours = ", ".join(a.sizes) or "none"
    notes = [f"Sizes in this sweep: {sizes_ours}."] + _embed_note(a)
    cols = ["quantity", "size", "placement", "paper", "confidence", "ours_mean", "ours_std", "seeds",
            "diff", "source"]
    return TableSet("paper_comparison", "Side by side with the paper", caption, [Section("", columns, rows)],
                    cols, csv_rows, notes)


# ------------------------------------------------------------------------------------------ claims

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


def claims_table(a: Analysis) -> TableSet:
    caption = ("Each claim of PAPER.md section 2 tested on this sweep's runs. Values are means over the "
               "finished seeds at the LR chosen by the Table 1 rule unless the test says otherwise; "
               "layer 0 is the embedding output, so depth ratios start at layer 1; \"not measured\" = "
               "the runs lack the placements or metrics the test needs. ✗ marks a size where the test "
               f"fails. {LR_RULE}")
    columns = ["claim", "tag (PAPER.md)", "test (ours)", "numbers", "verdict"]
    rows, csv_rows = [], []
    for c in CLAIMS:
        verdict, numbers = c.check(a)
        rows.append([c.claim, c.tag, c.test, numbers, Cell(verdict, bold=True)])
        csv_rows.append([c.id, c.claim, c.tag, c.test, numbers, verdict])
    return TableSet("claims", "Claims", caption, [Section("", columns, rows)],
                    ["id", "claim", "tag", "test", "numbers", "verdict"], csv_rows, _embed_note(a))


# ------------------------------------------------------------------------------------------- build

DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent / "results" / "paper_reference.csv"


def commit_label(rows: Sequence[dict[str, Any]]) -> str:
    """The commit(s) the runs recorded (12 hex digits each, '+dirty' where any run's tree was)."""
    by_commit: dict[str, bool] = {}
    for r in rows:
        c = str(r.get("commit") or "").strip()
        if c:
            dirty = str(r.get("dirty") or "").lower() in ("true", "1", "yes")
            by_commit[c[:12]] = by_commit.get(c[:12], False) or dirty
    if not by_commit:
        return "unrecorded"
    return ", ".join(f"{c}{'+dirty' if d else ''}" for c, d in sorted(by_commit.items()))


def header(source: Path, commit: str) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    return (f"generated by `periln tables` (suite/tables.py) from {source.name} (sha256 {digest}) at "
            f"commit {commit}; do not edit")


def build_tables(rows: list[dict[str, Any]], reference: Sequence[dict[str, str]]) -> list[TableSet]:
    a = Analysis(rows)
    return [table1(a), lr_table(a), paper_table(a, reference), claims_table(a)]


def build(runs_csv: str | Path, out_dir: str | Path, reference: str | Path | None = None,
          commit: str | None = None) -> list[Path]:
    """runs.csv -> tables.md, tables.tex and one CSV per table in out_dir. Returns the files written."""
    runs_csv, out_dir = Path(runs_csv), Path(out_dir)
    rows = read_runs(runs_csv)
    if not rows:
        raise ConfigError(f"{runs_csv}: no runs")
    tables = build_tables(rows, read_reference(reference or DEFAULT_REFERENCE))
    head = header(runs_csv, commit or commit_label(rows))
    written = [_write(out_dir / "tables.md", render_markdown(tables, head)),
               _write(out_dir / "tables.tex", render_latex(tables, head))]
    written += [_write(out_dir / f"{t.id}.csv", render_csv(t, head)) for t in tables]
    return written


def regenerate(out_dir: str | Path, sweep: str | None = None, tracking_uri: str | None = None,
               from_csv: str | Path | None = None, commit: str | None = None,
               reference: str | Path | None = None, figures: bool = True) -> list[Path]:
    """`periln tables`: export the sweep's MLflow runs (or take runs.csv, and curves.csv beside it),
    then build the tables and figures into out_dir. Returns every file written."""
    import shutil

    out_dir = Path(out_dir)
    runs_csv, curves_csv = out_dir / "runs.csv", out_dir / "curves.csv"
    if from_csv is not None:
        src = Path(from_csv)
        read_runs(src)  # fails with one line before anything is written
        out_dir.mkdir(parents=True, exist_ok=True)
        if src.resolve() != runs_csv.resolve():  # out_dir holds its own copy: self-contained
            shutil.copyfile(src, runs_csv)
            if src.with_name("curves.csv").is_file():
                shutil.copyfile(src.with_name("curves.csv"), curves_csv)
    else:
        if sweep is None:
            raise ConfigError("give a sweep file (its MLflow runs are exported), or --from-csv runs.csv")
        export(sweep, out_dir, tracking_uri)
    written = [p for p in (runs_csv, curves_csv) if p.is_file()]
    written += build(runs_csv, out_dir, reference, commit)
    if figures:
        from suite import figures as figs

        written += figs.build(runs_csv, out_dir / "figures", curves_csv)
    return written

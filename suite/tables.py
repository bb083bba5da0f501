"""Tables from runs.csv: Markdown, LaTeX and CSV (Table 1, LR sensitivity, the paper comparison,
the claims), and `periln tables` (regenerate: export the records, build the tables and figures).

The records and their schema are suite.records, the aggregation and its rules suite.analysis, the
claims' verdicts suite.claims; this module renders them.

Rebuilding from the same runs.csv gives byte-identical files: no clock, no absolute path, stable
sorting, fixed float formatting; the header's commit is the one recorded in the runs (or passed in),
never the checkout that happens to rebuild them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.tasks import AVERAGE_METRIC, PAPER_TASKS, metric_key
from models import ConfigError
from suite import analysis
from suite import claims as claims_engine
from suite.analysis import DASH, DIVERGENCE_RULE, LR_RULE, STD_RULE, Analysis, Stat, col, finite, paper_avg
from suite.records import export, read_curves, read_runs, write_atomic
from suite.stats import UNTESTABLE

TASK_LABELS = {"arc_easy": "ARC-Easy", "hellaswag": "HellaSwag", "piqa": "PIQA", "social_iqa": "SIQA",
               "winogrande": "Winogrande"}


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
    """docs/paper.md section 1: state Peri-LN's embedding-norm setting wherever it is compared."""
    notes = []
    for arm in a.arms():
        runs = [r for r in a.rows if r["arm"] == arm and r["placement"] in ("peri_ln", "sandwich_ln")]
        vals = sorted({str(r.get("embed_norm") or "unrecorded").lower() for r in runs})
        if vals:
            setting = {"true": "on", "false": "off"}
            notes.append(f"{a.title(arm)}: embedding norm {' / '.join(setting.get(v, v) for v in vals)}.")
    return notes


SYNTHETIC_WARNING = ("SYNTHETIC tasks in the benchmarks' formats (suite/synthetic_tasks.py): a wiring check "
                     "of the pipeline, not ARC-Easy, HellaSwag, PIQA, SIQA or Winogrande.")


def synthetic_benchmarks(a: Analysis) -> bool:
    """Whether any run's benchmark scores came from the synthetic task builder."""
    return any("synthetic" in str(r.get("benchmark_data") or "") for r in a.rows)


def table1(a: Analysis) -> TableSet:
    acc_note = ", ".join(f"{TASK_LABELS[t]} {AVERAGE_METRIC[t]}" for t in PAPER_TASKS)
    synthetic = synthetic_benchmarks(a)
    tag = " (synthetic)" if synthetic else ""
    caption = (("Benchmarks: " + SYNTHETIC_WARNING + " " if synthetic else "")
               + f"The paper's Table 1 layout: accuracy (%) per task ({acc_note}; zero-shot), their "
               f"5-task average, final val loss (nats/token) and val bits per UTF-8 byte (ours: comparable "
               f"across tokenizers); {STD_RULE} {LR_RULE} {analysis.EDGE_RULE} {DIVERGENCE_RULE}")
    columns = ["placement", "LR", "diverged", "failed to learn", *(m + tag for m, _ in METRICS),
               "5-task avg" + tag, "val loss", "val bpb"]
    sections, csv_rows = [], []
    for size in a.sizes:
        rows = []
        for arm in a.arms(size):
            lr = a.chosen.get((arm, size))
            div, n = a.counts(arm, size, lr) if lr is not None else a.counts(arm, size)
            failed = a.failed(arm, size, lr) if lr is not None else a.failed(arm, size)
            stats = [a.stat(arm, size, col(k)) for _, k in METRICS]
            avg = a.stat(arm, size, paper_avg)
            loss = a.stat(arm, size, col("val_loss"))
            edge = a.lr_edge(arm, size)
            bpb = a.stat(arm, size, col("val_bpb"))
            rows.append([a.title(arm), flr(lr) + (f" ({edge} tried)" if edge else ""), f"{div}/{n}",
                         f"{failed}/{n}", *(fstat(s, 2, 100) for s in stats), fstat(avg, 2, 100),
                         fstat(loss, 3), fstat(bpb, 3)])
            csv_rows.append([size, arm, a.title(arm), fcsv(lr), edge or "", str(n - div), str(div),
                             str(failed), str(n),
                             *(x for s in [*stats, avg] for x in (
                                 None if s.mean is None else s.mean * 100,
                                 None if s.std is None else s.std * 100)),
                             loss.mean, loss.std, bpb.mean, bpb.std])
        sections.append(Section(f"size {size}", columns, rows))
    metric_cols = [m.lower().replace("-", "_") + ("_synthetic" if synthetic else "") for m, _ in METRICS]
    metric_cols += ["avg5" + ("_synthetic" if synthetic else "")]
    csv_cols = ["size", "placement", "title", "lr", "lr_edge", "seeds_used", "seeds_diverged",
                "seeds_failed_to_learn", "seeds",
                *(f"{m}_{s}" for m in metric_cols for s in ("mean", "std")),
                "val_loss_mean", "val_loss_std", "val_bpb_mean", "val_bpb_std"]
    return TableSet("table1", "Table 1: downstream accuracy, val loss and val bpb", caption, sections,
                    csv_cols, csv_rows, _embed_note(a) + _excluded_note(a) + _edge_note(a))


WARNING = "WARNING: "  # a note that is a warning (the report shows it as one)


def _edge_note(a: Analysis) -> list[str]:
    return [WARNING + w for w in a.edge_warnings()]


def lr_table(a: Analysis) -> TableSet:
    caption = ("Learning-rate sensitivity: mean final val loss over the finished seeds of each "
               "(placement, LR); (k/n div) = k of n seeds diverged, \"diverged\" = all of them; "
               f"bold = the LR chosen for Table 1. {LR_RULE}")
    sections, csv_rows = [], []
    for size in a.sizes:
        lrs = a.lrs(size=size)
        rows = []
        for arm in a.arms(size):
            metric = a.select_metric[(arm, size)]
            row: list[Cell | str] = [a.title(arm)]
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
                csv_rows.append([size, arm, a.title(arm), fcsv(lr), metric, st.mean, st.std, str(st.n),
                                 str(div), str(n), "yes" if a.chosen.get((arm, size)) == lr else "no"])
            rows.append(row)
        sections.append(Section(f"size {size}", ["placement", *(f"LR {flr(lr)}" for lr in lrs)], rows))
    cols = ["size", "placement", "title", "lr", "metric", "mean", "std", "seeds_used", "seeds_diverged",
            "seeds", "chosen"]
    return TableSet("lr_sensitivity", "Learning-rate sensitivity", caption, sections, cols, csv_rows,
                    _excluded_note(a))


# ----------------------------------------------------------------------------- paper comparison

REFERENCE_COLUMNS = ("source", "quantity", "size", "placement", "value", "unit", "confidence", "note")
QUANTITIES: dict[str, tuple[Callable[[dict], float | None], float, int]] = {
    # quantity in paper_reference.csv -> (per-run value, scale to the paper's unit, decimals)
    "5-task average": (paper_avg, 100.0, 2),
    "val loss": (col("val_loss"), 1.0, 3),
    "perplexity": (lambda r: None if finite(r.get("val_loss")) is None else math.exp(r["val_loss"]),
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
               "tags of docs/paper.md: [paper] stated by the paper, [secondary] only in summaries). Ours = "
               "mean ± std over seeds at the LR chosen by the Table 1 rule; \"not run\" = no finished run "
               "of that placement and size in this sweep. Our val loss (and perplexity = exp of it, per "
               "run) is on the sweep's own eval set and tokenizer (runs.csv columns val_source, "
               "tokenizer): comparable to the paper's C4 numbers only where both match.")
    synthetic = synthetic_benchmarks(a)
    if synthetic:
        caption = f"Benchmarks: {SYNTHETIC_WARNING} " + caption
    columns = ["quantity", "size", "placement", "paper", "confidence",
               "ours (accuracies synthetic)" if synthetic else "ours", "seeds", "ours − paper", "source"]
    rows, csv_rows = [], []
    for ref in reference:
        fn, scale, nd = QUANTITIES[ref["quantity"]]
        arm, size = ref["placement"], ref["size"]
        st = a.stat(arm, size, fn)
        paper = float(ref["value"])
        ours = None if st.mean is None else st.mean * scale
        diff = None if ours is None else ours - paper
        rows.append([ref["quantity"], size, a.title(arm), fnum(paper, nd), ref["confidence"],
                     "not run" if ours is None else fstat(st, nd, scale), str(st.n),
                     fnum(diff, nd, signed=True), ref["source"]])
        csv_rows.append([ref["quantity"], size, arm, a.title(arm), paper, ref["confidence"], ours,
                         None if st.std is None else st.std * scale, str(st.n), diff, ref["source"]])
    sizes_ours = ", ".join(a.sizes) or "none"
    notes = [f"Sizes in this sweep: {sizes_ours}."] + _embed_note(a)
    cols = ["quantity", "size", "placement", "title", "paper", "confidence", "ours_mean", "ours_std",
            "seeds", "diff", "source"]
    return TableSet("paper_comparison", "Side by side with the paper", caption, [Section("", columns, rows)],
                    cols, csv_rows, notes)


# ---------------------------------------------------------------- claims (verdicts: suite.claims)

def claims_table(a: Analysis, curves: claims_engine.Curves | None = None) -> TableSet:
    results = claims_engine.evaluate(a, curves)
    caption = ("Each claim of docs/paper.md section 2 tested on this sweep's runs (suite/claims.py). A "
               "claim compares its quantity between arms paired by seed, at matched (size, LR) cells for "
               "stability claims and at each arm's chosen LR for quality claims; each compared group gets "
               "a 95% interval. holds = every group's interval lies on the claim's side of its threshold; "
               "does not hold = some group's lies on the other side; inconclusive = an interval straddles "
               "it; not testable here = a precondition failed (the reason is given). Every number is in "
               f"claims.csv. {LR_RULE}")
    columns = ["claim", "tag (docs/paper.md)", "quantity", "compares", "method", "evidence", "verdict"]
    rows = []
    for res in results:
        c = res.claim
        verdict = res.verdict + (f" ({res.reason})" if res.verdict == UNTESTABLE and res.reason else "")
        rows.append([c.claim, c.tag, f"{c.quantity}; {c.threshold}", c.compares, res.method,
                     claims_engine.evidence(res), Cell(verdict, bold=True)])
    return TableSet("claims", "Claims", caption, [Section("", columns, rows)],
                    list(claims_engine.CSV_COLUMNS), claims_engine.csv_rows(results),
                    _embed_note(a) + _synthetic_note(a))


def _synthetic_note(a: Analysis) -> list[str]:
    return ([f"Benchmarks: {SYNTHETIC_WARNING}"] if synthetic_benchmarks(a) else [])


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


def build_tables(rows: list[dict[str, Any]], reference: Sequence[dict[str, str]],
                 curves: claims_engine.Curves | None = None) -> list[TableSet]:
    a = Analysis(rows)
    return [table1(a), lr_table(a), paper_table(a, reference), claims_table(a, curves)]


def load(runs_csv: Path, reference: str | Path | None = None):
    """(runs, curves or None, the paper's reference rows) that the tables (and the report) build from:
    runs.csv, the curves.csv beside it if any, the reference file (default results/)."""
    rows = read_runs(runs_csv)
    if not rows:
        raise ConfigError(f"{runs_csv}: no runs")
    curves_csv = runs_csv.with_name("curves.csv")
    curves = read_curves(curves_csv) if curves_csv.is_file() else None
    return rows, curves, read_reference(reference or DEFAULT_REFERENCE)


def build(runs_csv: str | Path, out_dir: str | Path, reference: str | Path | None = None,
          commit: str | None = None) -> list[Path]:
    """runs.csv -> tables.md, tables.tex and one CSV per table in out_dir. Returns the files written."""
    runs_csv, out_dir = Path(runs_csv), Path(out_dir)
    rows, curves, ref = load(runs_csv, reference)
    tables = build_tables(rows, ref, curves)
    head = header(runs_csv, commit or commit_label(rows))
    written = [write_atomic(out_dir / "tables.md", render_markdown(tables, head)),
               write_atomic(out_dir / "tables.tex", render_latex(tables, head))]
    written += [write_atomic(out_dir / f"{t.id}.csv", render_csv(t, head)) for t in tables]
    return written


def regenerate(out_dir: str | Path, sweep: str | None = None, tracking_uri: str | None = None,
               from_csv: str | Path | None = None, commit: str | None = None,
               reference: str | Path | None = None, figures: bool = True) -> list[Path]:
    """`periln tables`: export the sweep's MLflow runs (or take runs.csv, and curves.csv beside it),
    then build the tables and figures into out_dir. Returns every file written. Everything is
    built in a staging folder and moved into out_dir only once complete: a failure midway leaves
    out_dir as it was."""
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    if from_csv is None and sweep is None:
        raise ConfigError("give a sweep file (its MLflow runs are exported), or --from-csv runs.csv")
    near = out_dir.parent if out_dir.parent.is_dir() else None  # same file system: moves are renames
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=near))
    try:
        runs_csv, curves_csv = stage / "runs.csv", stage / "curves.csv"
        if from_csv is not None:
            src = Path(from_csv)
            shutil.copyfile(_checked(src, read_runs), runs_csv)  # out_dir holds its own copy
            if src.with_name("curves.csv").is_file():
                shutil.copyfile(_checked(src.with_name("curves.csv"), read_curves), curves_csv)
        else:
            export(sweep, stage, tracking_uri)
        built = [p for p in (runs_csv, curves_csv) if p.is_file()]
        built += build(runs_csv, stage, reference, commit)
        if figures:
            from suite import figures as figs

            built += figs.build(runs_csv, stage / "figures", curves_csv)
        written = []
        for path in built:
            target = out_dir / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _checked(path: Path, read) -> Path:
    """`path`, once `read` has parsed it (a bad file fails with its one line before any output)."""
    read(path)
    return path

"""`periln report`: one self-contained HTML file of a sweep's results, to read offline or attach.

report.html holds Table 1, the LR sensitivity, the claims with their intervals and preconditions,
the figures (PNG as data URIs), the paper side by side, and the provenance: the commits, the sweep
file, each placement's equation and source. Nothing is computed here: the tables are the TableSets
of suite.tables (the very objects tables.md renders), the figures the PNGs suite.figures wrote; this
module renders them as HTML. No network: no external script, style, font or image, and a
Content-Security-Policy that forbids any (only inline styles and data: images).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.placements import PLACEMENTS
from suite import tables
from suite.analysis import Analysis
from suite.claims import CSV_COLUMNS as CLAIM_COLUMNS
from suite.figures import CAPTIONS as FIGURE_CAPTIONS
from suite.files import atomic_write_text
from suite.outcome import USED
from suite.stats import FAILS, HOLDS, INCONCLUSIVE, UNTESTABLE

REPORT = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1200px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
h3 { margin-bottom: .3em; }
nav a { margin-right: 1em; }
.meta, .caption, figcaption { color: #57606a; font-size: .92em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
table.text { width: 100%; table-layout: fixed; } table.text td { overflow-wrap: anywhere; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f5f7; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.warn { background: #fff4d6; border-left: 4px solid #d4a017; padding: .4em .8em; margin: .3em 0; }
.v-holds { color: #116329; } .v-fails { color: #a40e26; } .v-inconclusive { color: #7d4e00; }
.v-untestable { color: #57606a; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
details { margin: .3em 0 1em; } summary { cursor: pointer; color: #0969da; }
"""
# a number as the tables print one: "2.650 ± 0.071", "0/2", "+1.31", "0.01 (largest tried)"
NUMBER = re.compile(r"^[+\-−]?\d[\d.,/e+\-]*( ± [\d.]+)?( \([^)]*\))?$")
VERDICT_CLASS = {HOLDS: "v-holds", FAILS: "v-fails", INCONCLUSIVE: "v-inconclusive",
                 UNTESTABLE: "v-untestable"}


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ----------------------------------------------------------------------------------- rendering

def _cell(c: tables.Cell | str) -> str:
    text = c.text if isinstance(c, tables.Cell) else c
    body = esc(text)
    for verdict, cls in VERDICT_CLASS.items():
        if text.startswith(verdict):
            body = f'<span class="{cls}">{body}</span>'
            break
    if isinstance(c, tables.Cell) and c.bold and text != tables.DASH:
        body = f"<strong>{body}</strong>"
    numeric = NUMBER.match(text) or text in (tables.DASH, "diverged")
    return f'<td class="num">{body}</td>' if numeric else f"<td>{body}</td>"


def html_table(columns: Sequence[str], rows: Sequence[Sequence[tables.Cell | str]],
               widths: Sequence[int] = ()) -> str:
    """A table; `widths` (percent per column) fix the layout of tables of long text."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    cols = ("<colgroup>" + "".join(f'<col style="width:{w}%">' for w in widths) + "</colgroup>"
            if widths else "")
    cls = ' class="text"' if widths else ""
    return (f'<div class="scroll"><table{cls}>{cols}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            "</table></div>")


def _notes(notes: Sequence[str]) -> str:
    """A table's notes: its warnings as boxes first, the other notes as a list."""
    warns = [n.removeprefix(tables.WARNING) for n in notes if n.startswith(tables.WARNING)]
    items = [n for n in notes if not n.startswith(tables.WARNING)]
    return ("".join(f'<div class="warn">⚠ {esc(w)}</div>' for w in warns)
            + (f"<ul>{''.join(f'<li>{esc(n)}</li>' for n in items)}</ul>" if items else ""))


def table_section(t: tables.TableSet, anchor: str, setting: str = "", extra: str = "",
                  widths: Sequence[int] = ()) -> str:
    parts = [f'<h2 id="{anchor}">{esc(t.title)}</h2>', f'<p class="caption">{esc(t.caption)}</p>']
    if setting:
        parts.append(f'<p class="caption">{esc(setting)}</p>')
    for sec in t.sections:
        if sec.title:
            parts.append(f"<h3>{esc(sec.title)}</h3>")
        parts.append(html_table(sec.columns, sec.rows, widths))
    parts.append(_notes(t.notes))
    return "\n".join(parts + [extra])


def claim_rows(t: tables.TableSet) -> list[list[tables.Cell | str]]:
    """The claims table's rows with the verdict cell cut to the verdict where its reason repeats the
    evidence cell beside it (the Markdown table needs both; here they stand side by side)."""
    out = []
    for row in t.sections[0].rows:
        *rest, evidence, verdict = row
        text = verdict.text if isinstance(verdict, tables.Cell) else verdict
        word = next((v for v in VERDICT_CLASS if text.startswith(v)), text)
        reason = text[len(word):].strip().removeprefix("(").removesuffix(")")
        keep = word if not reason or reason in str(evidence) else text
        out.append([*rest, evidence, tables.Cell(keep, bold=True)])
    return out


def claim_details(t: tables.TableSet) -> str:
    """Every number behind each verdict (claims.csv's rows), one collapsible table per claim."""
    cols = list(CLAIM_COLUMNS)
    shown = ["group", "n", "estimate", "ci_low", "ci_high", "p_sign_flip", "means", "verdict", "reason"]
    out = []
    by_claim: dict[str, list[list[Any]]] = {}
    for row in t.csv_rows:
        by_claim.setdefault(row[cols.index("id")], []).append(row)
    for cid, rows in by_claim.items():
        claim = rows[0][cols.index("claim")]
        out.append(f"<details><summary><code>{esc(cid)}</code>: {esc(claim)} (threshold "
                   f"{esc(rows[0][cols.index('threshold')])})</summary>"
                   + html_table(shown, [[str(r[cols.index(c)]) for c in shown] for r in rows])
                   + "</details>")
    return "<h3>Intervals per compared group</h3>" + "".join(out)


def figure_html(path: Path, where: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = FIGURE_CAPTIONS.get(path.stem, path.stem)
    return (f'<figure id="fig-{esc(path.stem)}"><img alt="{esc(path.stem)}" '
            f'src="data:image/png;base64,{data}"><figcaption><strong>{esc(path.stem)}</strong>: '
            f"{esc(caption)} <i>{esc(where)}</i></figcaption></figure>")


# ----------------------------------------------------------------------------------- the setting

def _values(xs: Sequence[Any]) -> str:
    vals = sorted({str(x) for x in xs if x not in (None, "")}, key=lambda v: (len(v), v))
    return ", ".join(vals) if vals else "unrecorded"


def _tokens(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def _known(label: str, xs: Sequence[Any], after: bool = False) -> list[str]:
    """["<values> label"] (or "label <values>"), [] when no run recorded it."""
    v = _values(xs)
    return [] if v == "unrecorded" else [f"{label} {v}" if after else f"{v} {label}"]


def setting(a: Analysis, tokens_per_step: Mapping[str, int]) -> list[tuple[str, str]]:
    """Per size, (long, short) text of what the runs were: depth and width, data, tokenizer, steps
    and tokens per run (runs.csv; tokens per step from the sweep's cells when its file is given).
    What no run recorded is left out."""
    out = []
    for size in a.sizes:
        rows = [r for r in a.rows if r["size"] == size]
        done = [r for r in rows if r["status"] in USED] or rows
        known = [r["step"] * tokens_per_step[r["key"]] for r in done
                 if r.get("step") and r["key"] in tokens_per_step]
        dims = _known("layers", [r.get("n_layers") for r in rows]) + _known(
            "d_model", [r.get("d_model") for r in rows], after=True)
        data = _known("data", [r.get("data_source") for r in rows], after=True) + _known(
            "val", [r.get("val_source") for r in rows], after=True) + _known(
            "tokenizer", [r.get("tokenizer") for r in rows], after=True)
        tokens = [f"{_values([_tokens(t) for t in known])} tokens"] if known else []
        run = _known("steps", [r.get("step") for r in done]) + tokens
        head = f"size {size}" + (f" ({', '.join(dims)})" if dims else "")
        per_run = " and ".join(run) + " per run" if run else ""
        untold = "" if known else "tokens unknown (give the sweep file: its tokens per step)"
        long = "; ".join(x for x in (head, *data, per_run, untold, f"{len(rows)} runs") if x) + "."
        out.append((long, ", ".join([size, *dims, *data[:1], *run])))
    return out


# ---------------------------------------------------------------------------------- provenance

def placements_table(a: Analysis) -> str:
    used = sorted({str(r.get("placement") or r["arm"]) for r in a.rows})
    rows = []
    for name in used:
        cls = PLACEMENTS.get(name)
        rows.append([cls.title if cls else name, name, cls.equation() if cls else "not registered here",
                     cls.source if cls else ""])
    return html_table(["placement", "name", "equation", "source"], rows)


def provenance(a: Analysis, runs_csv: Path, commit: str, sweep_file: Path | None) -> str:
    from suite.launch import git_state

    checkout, dirty = git_state(Path(__file__).resolve().parent.parent)
    state = "" if dirty is None else " (uncommitted changes)" if dirty else " (clean)"
    digest = hashlib.sha256(runs_csv.read_bytes()).hexdigest()[:12]
    parts = ['<h2 id="provenance">Provenance</h2>', "<ul>",
             f"<li>Runs recorded at commit <code>{esc(commit)}</code> "
             f"(runs.csv column <code>commit</code>).</li>",
             f"<li>This report built by the checkout at <code>{esc(checkout)}</code>{esc(state)}.</li>",
             f"<li>Records: <code>{esc(runs_csv.name)}</code> (sha256 {digest}), {len(a.rows)} runs.</li>",
             "</ul>", "<h3>Placements</h3>", placements_table(a)]
    if sweep_file is not None:
        parts += [f"<h3>Sweep file <code>{esc(sweep_file.name)}</code></h3>",
                  f"<pre>{esc(sweep_file.read_text())}</pre>"]
    else:
        parts.append('<p class="meta">No sweep file given (built from runs.csv alone).</p>')
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ build

def render(rows: list[dict[str, Any]], runs_csv: Path, reference: Sequence[dict[str, str]],
           curves: Any, figures: Sequence[Path], commit: str, name: str,
           sweep_file: Path | None = None, tokens_per_step: Mapping[str, int] | None = None) -> str:
    """The report's HTML: the TableSets of suite.tables.build_tables and the figure PNGs."""
    a = Analysis(rows)
    table1, lr, paper, claims = tables.build_tables(rows, reference, curves)
    sizes = setting(a, tokens_per_step or {})
    where = " ".join(long for long, _ in sizes)
    short = "Runs: " + "; ".join(s for _, s in sizes) + "."
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    summary = (f"{len(rows)} runs ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}); "
               f"placements {', '.join(a.title(x) for x in a.arms())}; sizes {', '.join(a.sizes)}.")
    pngs = [p for p in figures if p.suffix == ".png"]
    figs = "\n".join(figure_html(p, short) for p in pngs) or '<p class="meta">No figures.</p>'
    warnings = a.edge_warnings()
    top = ((f'<div class="warn">⚠ {len(warnings)} chosen LR(s) at the edge of their grid: see '
            '<a href="#table1">Table 1</a>.</div>' if warnings else "")
           + (f'<div class="warn">⚠ {esc(tables.SYNTHETIC_WARNING)}</div>'
              if tables.synthetic_benchmarks(a) else ""))
    nav = " ".join(f'<a href="#{k}">{v}</a>' for k, v in (
        ("table1", "Table 1"), ("lr", "LR sensitivity"), ("claims", "Claims"), ("figures", "Figures"),
        ("paper", "Paper"), ("provenance", "Provenance")))
    body = [
        f"<h1>Peri-LN suite report: {esc(name)}</h1>",
        f'<p class="meta">generated by <code>periln report</code> (suite/report.py) from '
        f"{esc(runs_csv.name)} at commit {esc(commit)}; do not edit. {esc(summary)}</p>",
        "".join(f'<p class="meta">{esc(long)}</p>' for long, _ in sizes), f"<nav>{nav}</nav>", top,
        table_section(table1, "table1", where),
        table_section(lr, "lr"),
        # claim, tag, quantity, compares, method, evidence, verdict
        table_section(dataclasses.replace(claims, sections=[tables.Section("", claims.sections[0].columns,
                                                                           claim_rows(claims))]),
                      "claims", "", claim_details(claims), widths=(16, 8, 16, 14, 10, 24, 12)),
        f'<h2 id="figures">Figures</h2><p class="caption">{esc(where)}</p>{figs}',
        table_section(paper, "paper"),  # its rows are short: the natural layout
        provenance(a, runs_csv, commit, sweep_file),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>periln report: {esc(name)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def build(runs_csv: str | Path, out_dir: str | Path, figures: Sequence[Path] = (),
          reference: str | Path | None = None, commit: str | None = None, sweep: Any = None) -> Path:
    """runs.csv (+ curves.csv beside it) and the figure files -> <out_dir>/report.html, written
    atomically. `sweep`: the suite.sweep.Sweep the runs came from (its file and tokens per step)."""
    from suite import cost

    runs_csv, out_dir = Path(runs_csv), Path(out_dir)
    rows, curves, reference_rows = tables.load(runs_csv, reference)
    name = sweep.name if sweep is not None else _values([r.get("sweep") for r in rows])
    sweep_file = Path(sweep.path) if sweep is not None and Path(sweep.path).is_file() else None
    per_step = {c.key: cost.tokens_per_step(c) for c in sweep.cells} if sweep is not None else {}
    text = render(rows, runs_csv, reference_rows, curves, figures, commit or tables.commit_label(rows), name,
                  sweep_file, per_step)
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out_dir / REPORT, text)


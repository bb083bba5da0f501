"""`periln report`: one offline HTML file from hand-built records whose truth is known, checked by
parsing it and by opening it in a real headless Chromium (no console error, no network request).

Hand-worked facts of the records below (size tiny, 3 layers, 150 steps):
- pre_ln: LR 0.001 val 3.0, 3.2; 0.003 val 2.8, 3.0 (2.900 ± 0.141); 0.01 one seed 2.6 and one
  diverged -> 0.003 chosen, inside its grid. Accuracies at 0.003: every task 0.50 / 0.52 -> 51.00 ± 1.41.
- peri_ln: 0.001 3.0, 3.1; 0.003 2.8, 2.9; 0.01 2.6, 2.7 (2.650 ± 0.071) -> 0.01, the largest tried.
  Accuracies at 0.01: 0.60 both seeds -> 60.00 ± 0.00.
- post_ln: one LR, 0.001: 3.4, 3.6 (3.500 ± 0.141): no grid, no edge.
- mix_ln alpha=0.25: 0.001 3.3, 3.5 (3.400 ± 0.141); 0.003 3.6, 3.6 -> 0.001, the smallest tried.
- no_divergence holds (Pre-LN diverged at 0.01, Peri-LN did not); the depth claims are not testable
  (3 layers < 8).
- sweeps/smoke.yaml: 128 x 16 = 2048 tokens a step; its cells' 150 steps = 307,200 -> "307K tokens".
"""

import base64
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from evals.tasks import AVERAGE_METRIC, PAPER_TASKS, metric_key
from models.placements import PLACEMENTS
from suite import records as R
from suite.cli import main

VAL = {  # (arm, lr) -> val loss per seed; None = diverged
    ("pre_ln", 0.001): (3.0, 3.2), ("pre_ln", 0.003): (2.8, 3.0), ("pre_ln", 0.01): (2.6, None),
    ("peri_ln", 0.001): (3.0, 3.1), ("peri_ln", 0.003): (2.8, 2.9), ("peri_ln", 0.01): (2.6, 2.7),
    ("post_ln", 0.001): (3.4, 3.6),
    ("mix_ln_alpha0.25", 0.001): (3.3, 3.5), ("mix_ln_alpha0.25", 0.003): (3.6, 3.6),
}
ACC = {("pre_ln", 0.003): (0.50, 0.52), ("peri_ln", 0.01): (0.60, 0.60)}
WARNINGS = ["best LR of Peri-LN at tiny is the largest tried (0.01): the optimum was not found; "
            "widen the grid",
            "best LR of Mix-LN (alpha=0.25) at tiny is the smallest tried (0.001): the optimum was not "
            "found; widen the grid"]


def write_records(folder):
    rows, points = [], []
    for (arm, lr), losses in VAL.items():
        for seed, loss in enumerate(losses):
            key = f"{arm}-tiny-lr{lr:g}-s{seed}"
            placement, args = ("mix_ln", "alpha=0.25") if arm.startswith("mix_ln") else (arm, "")
            row = dict(key=key, sweep="smoke", arm=arm, placement=placement, placement_args=args,
                       size="tiny", lr=lr, seed=seed, status="finished" if loss else "diverged",
                       step=150 if loss else 60, n_layers=3, d_model=64, data_source="synthetic",
                       val_source="synthetic", tokenizer="byte", commit="0123456789abcdef", dirty="false",
                       embed_norm="true" if arm == "peri_ln" else "false", val_loss=loss, train_loss=loss)
            if (arm, lr) in ACC:
                row |= {metric_key(t, AVERAGE_METRIC[t]): ACC[(arm, lr)][seed] for t in PAPER_TASKS}
            rows.append(row)
            for step in range(0, 151, 30):
                points.append((key, "train/loss", step, 5.0 - step / 100 + seed / 10))
    R.write_runs_csv(rows, folder / "runs.csv")
    R.write_curves_csv(points, folder / "curves.csv")
    return folder / "runs.csv"


class Page(HTMLParser):
    """The report's tags, the attributes that could fetch something, and the text of each table
    by the id of the section above it."""

    def __init__(self):
        super().__init__()
        self.tags, self.links, self.images = [], [], []
        self.section, self.rows, self._row, self._cell = None, {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href", "srcset", "action", "data", "poster")]
        if tag == "img":
            self.images.append(a["src"])
        if tag == "h2":
            self.section = a.get("id")
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.setdefault(self.section, []).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    runs = write_records(folder)
    out = folder / "out"
    assert main(["report", "sweeps/smoke.yaml", "--from-csv", str(runs), "--out", str(out)]) == 0
    return out


def parse(path):
    page = Page()
    page.feed(path.read_text())
    return page


def test_report_holds_the_constructed_numbers_with_readable_names(report):
    html = (report / "report.html").read_text()
    page = parse(report / "report.html")
    table1 = {r[0]: r for r in page.rows["table1"][1:]}
    assert set(table1) == {"Post-LN", "Pre-LN", "Peri-LN", "Mix-LN (alpha=0.25)"}  # never peri_ln
    # placement, LR, diverged, failed to learn, 5 tasks, 5-task avg, val loss, val bpb (none here)
    assert table1["Pre-LN"][1:4] == ["0.003", "0/2", "0/2"]
    assert table1["Pre-LN"][-3:] == ["51.00 ± 1.41", "2.900 ± 0.141", "—"]
    assert table1["Peri-LN"][1] == "0.01 (largest tried)" and table1["Peri-LN"][-3:-1] == [
        "60.00 ± 0.00", "2.650 ± 0.071"]
    assert table1["Post-LN"][1] == "0.001" and table1["Post-LN"][-2] == "3.500 ± 0.141"
    assert table1["Mix-LN (alpha=0.25)"][1] == "0.001 (smallest tried)"
    lr = {r[0]: r[1:] for r in page.rows["lr"]}
    assert lr["placement"] == ["LR 0.001", "LR 0.003", "LR 0.01"]
    assert lr["Pre-LN"] == ["3.100", "2.900", "2.600 (1/2 div)"] and lr["Post-LN"] == ["3.500", "—", "—"]
    # the edge warnings, under Table 1 (and printed: the next test)
    assert all(w in html for w in WARNINGS)
    assert "Pre-LN at tiny" not in html and "Post-LN at tiny" not in html
    # claims with verdicts and the reason a precondition failed
    claims = {r[0]: (r[-2], r[-1]) for r in page.rows["claims"][1:] if len(r) == 7}  # evidence, verdict
    assert claims["Peri-LN does not diverge where Pre-LN diverges"][1] == "holds"
    # the reason stands in the evidence column once, not again in the verdict's
    assert claims["Pre-LN's hidden-state variance grows exponentially with depth, Peri-LN's does not"] == (
        "tiny LR 0.001: depth 3 < 8 layers; tiny LR 0.003: depth 3 < 8 layers; tiny LR 0.01: depth 3 < 8 "
        "layers", "not testable here")
    groups = [r for r in page.rows["claims"] if r[:1] == ["tiny LR 0.01"]]
    assert groups, "the per-group intervals (claims.csv rows) are in the report"
    # the paper side by side: its numbers, ours not run at 400m
    paper = {(r[1], r[2], r[0]): r for r in page.rows["paper"][1:]}
    assert paper[("400m", "Peri-LN", "5-task average")][3] == "51.57"
    assert paper[("400m", "Peri-LN", "5-task average")][5] == "not run"
    # captions: size, data, steps, tokens (from the sweep file's cells)
    assert ("size tiny (3 layers, d_model 64); data synthetic; val synthetic; tokenizer byte; "
            "150 steps and 307K tokens per run; 18 runs.") in html
    # provenance: commits, the sweep file, each placement's equation and source
    assert "0123456789ab" in html and "name: smoke" in html
    prov = {r[1]: r for r in page.rows["provenance"][1:]}
    assert set(prov) == {"pre_ln", "peri_ln", "post_ln", "mix_ln"}
    assert prov["peri_ln"] == ["Peri-LN", "peri_ln", PLACEMENTS["peri_ln"].equation(),
                               PLACEMENTS["peri_ln"].source]


def test_report_is_self_contained(report):
    page = parse(report / "report.html")
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    # nothing to fetch: in-page anchors and data: images only
    assert page.links and all(v.startswith(("#", "data:image/png;base64,")) for v in page.links), page.links
    pngs = sorted(p.name for p in (report / "figures").glob("*.png"))
    assert {"loss_curves.png", "loss_vs_lr.png"} <= set(pngs) and len(page.images) == len(pngs)
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Content-Security-Policy" in (report / "report.html").read_text()
    assert not [p for p in report.iterdir() if p.name.endswith(".tmp")]  # written atomically


def test_report_from_csv_alone_and_bad_input(tmp_path, capsys):
    runs = write_records(tmp_path)
    assert main(["report", "--from-csv", str(runs)]) == 0  # out = the CSV's folder, no sweep file
    printed = capsys.readouterr().out.splitlines()
    assert [x for x in printed if x.startswith("warning: ")] == [f"warning: {w}" for w in WARNINGS]
    assert printed[-1].startswith(f"report {tmp_path / 'report.html'} (")
    html = (tmp_path / "report.html").read_text()
    assert "tokens unknown (give the sweep file" in html and "No sweep file given" in html
    assert main(["report"]) == 2
    assert capsys.readouterr().err.strip() == ("periln: error: give a sweep file (e.g. sweeps/smoke.yaml), "
                                               "or --from-csv runs.csv")


# ------------------------------------------------------------------------------ headless Chromium

INSTALL = "apt-get install -y chromium"


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium; installed with apt-get where this runs as root (as tests/test_slurm.py sets
    up its cluster), else the tests skip and say how to install it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        done = subprocess.run(INSTALL.split(), capture_output=True, env=env)
        if done.returncode:
            subprocess.run(["apt-get", "update"], capture_output=True, env=env)
            subprocess.run(INSTALL.split(), capture_output=True, env=env)
        found = shutil.which("chromium")
    if not found:
        pytest.skip(f"needs Chromium: {INSTALL} (Debian; as root)")
    return found


def open_in_browser(browser, page, tmp_path):
    """Load `page` headless: (the DOM after load, console lines, URLs the page asked the network for).
    The network log is Chromium's own; the browser's background services are told off, and what
    remains of theirs is told apart by its isolation key (the page's is file://)."""
    netlog = tmp_path / f"{page.stem}.netlog.json"
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-extensions", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--log-net-log={netlog}", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    by_source = {}
    for e in log["events"]:
        p = e.get("params", {})
        if e["type"] == start and "url" in p:
            by_source[e["source"]["id"]] = (p["url"], p.get("network_isolation_key", ""))
    requested = sorted({url for url, key in by_source.values()
                        if key.startswith("file://") and not url.startswith(("file:", "data:"))})
    return done.stdout, console, requested


def test_report_opens_in_headless_chromium_offline(report, chromium, tmp_path):
    dom, console, requested = open_in_browser(chromium, report / "report.html", tmp_path)
    assert console == [] and requested == []
    assert "Table 1: downstream accuracy, val loss and val bpb" in dom and "Mix-LN (alpha=0.25)" in dom
    assert dom.count("<img ") == len(list((report / "figures").glob("*.png")))
    # the two checks can fail: a page with an error and an outside image trips both
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><img src="http://127.0.0.1:9/x.png"><script>throw new Error("boom")'
                   "</script>")
    _, console, requested = open_in_browser(chromium, bad, tmp_path)
    assert any("Uncaught Error: boom" in line for line in console)
    assert requested == ["http://127.0.0.1:9/x.png"]

"""What a researcher sees while a sweep is planned, dry-run, submitted and waited for: the plan's
subtotals per size and per placement, the dry run's one-line verdict, cells done / running / left
with an ETA (from a real sqlite MLflow store), the runs table's URL and `periln --version`."""

from importlib.metadata import version

import pytest
import yaml

from suite import cost, tracking
from suite.cli import main
from suite.launch import Progress, clock, eta_s
from suite.sweep import format_plan, load_sweep


def sweep_file(tmp_path, grid, name="p", steps=10):
    data = {"name": name, "grid": grid,
            "base": {"size": "tiny", "out_dir": str(tmp_path / "runs"),
                     "data": {"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 3000},
                     "train": {"seq_len": 64, "batch_size": 8, "max_steps": steps, "val_every": 10,
                               "progress_bar": False}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_clock_and_eta_by_hand():
    assert clock(0) == "0:00" and clock(61.4) == "1:01" and clock(3725) == "1:02:05"
    assert eta_s(0, 5, 100.0) is None  # nothing ended yet: no pace to go by
    assert eta_s(2, 3, 60.0) == pytest.approx(90.0)  # 30 s a cell (wall clock), 3 to go
    assert eta_s(4, 0, 60.0) == 0.0


def test_plan_ends_with_subtotals_per_size_and_per_placement(tmp_path):
    path = sweep_file(tmp_path, {"placement": ["pre_ln", "peri_ln"], "size": ["tiny", "small"],
                                 "seed": [0, 1]})
    sweep = load_sweep(path)
    text = format_plan(sweep, sweep.cells)
    lines = text.splitlines()
    i = lines.index(next(line for line in lines if line.startswith("per size")))
    # 10 steps x 64 tokens x 8 sequences = 5120 tokens a cell; 4 cells per size and per placement
    rows = {line.split()[0]: line.split() for line in lines[i:] if line.startswith("  ")}
    assert [rows[k][1:3] for k in ("tiny", "small", "pre_ln", "peri_ln")] == [["4", "20.5K"]] * 4
    costs = cost.estimate(sweep.cells)
    small = sum(c.gpu_hours for k, c in costs.items() if "-small-" in k)
    peri = sum(c.gpu_hours for k, c in costs.items() if k.startswith("peri_ln-"))
    assert rows["small"][4] == f"{small:.4g}" and rows["peri_ln"][4] == f"{peri:.4g}"
    assert float(rows["small"][3]) > float(rows["tiny"][3])  # the larger model costs more FLOPs
    assert lines[i + 3].startswith("per placement") and lines[-1].startswith("total: 41K tokens")  # 8 x 5120


def _record(store, exp, key, status):
    run_id = store.create_run(exp, key, {}, {"executor": "debug"})
    if status != "queued":
        store.set_status(run_id, status)
    return run_id


def test_progress_counts_cells_from_the_records_and_gives_an_eta(tmp_path):
    sweep = load_sweep(sweep_file(tmp_path, {"seed": [0, 1, 2, 3]}))
    keys = [c.key for c in sweep.cells]
    uri = tracking.store_uri(sweep.out_dir)
    tracking.prepare_store(uri)
    store = tracking.Store(uri)
    exp = store.experiment_id(sweep.name, None)
    ids = {keys[0]: _record(store, exp, keys[0], "finished"),  # from an earlier submission
           keys[1]: _record(store, exp, keys[1], "running")}
    lines = []
    progress = Progress(sweep, keys, uri, lines.append)
    assert progress.counts() == (1, 1, 2)
    assert progress.line((1, 1, 2), 10.0) == "cells: 1 done, 1 running, 2 left"  # no pace yet
    store.set_status(ids[keys[1]], "failed")  # ended (a failed cell does not run again now)
    ids[keys[2]] = _record(store, exp, keys[2], "running")
    assert progress.counts() == (2, 1, 1)
    # one cell ended in this submission in 40 s; 2 to go: about 80 s
    assert progress.line(progress.counts(), 40.0) == "cells: 2 done, 1 running, 1 left, about 1:20 to go"
    progress.report(force=True)
    assert len(lines) == 1 and lines[0].startswith("cells: 2 done, 1 running, 1 left, about ")
    assert Progress(sweep, keys[:1], uri, lines.append).counts() == (1, 0, 0)  # only its own keys


def test_dry_run_says_what_it_would_submit_and_where_the_runs_table_is(tmp_path, capsys):
    path = sweep_file(tmp_path, {"seed": [0, 1, 2, 3]})
    sweep = load_sweep(path)
    keys = [c.key for c in sweep.cells]
    assert main(["submit", str(path), "--dry-run", "--executor", "debug"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would submit 4 cells (0 resumed), 0 already finished, 0 skipped" in out
    assert "MLflow runs:" not in out  # no store yet: nothing to open
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # a dry run records nothing

    uri = tracking.store_uri(sweep.out_dir)
    tracking.prepare_store(uri)
    store = tracking.Store(uri)
    exp = store.experiment_id(sweep.name, None)
    _record(store, exp, keys[0], "finished")
    _record(store, exp, keys[1], "diverged")
    _record(store, exp, keys[2], "interrupted")  # resumed
    assert main(["submit", str(path), "--dry-run", "--executor", "debug"]) == 0
    out = capsys.readouterr().out
    assert "dry run: would submit 2 cells (1 resumed), 2 already finished, 0 skipped" in out
    assert f"MLflow runs: http://127.0.0.1:5000/#/experiments/{exp}/runs (start the UI: periln " \
           f"mlflow-ui {path})" in out
    assert len(store.runs(exp)) == 3  # still nothing recorded


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"periln {version('periln-suite')}"

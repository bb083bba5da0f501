"""`periln demo` end to end, shortened: two cells of sweeps/smoke.yaml (pre_ln and peri_ln, one LR,
one seed, 60 steps) through the local executor, the sqlite MLflow store, lm-eval on the offline
synthetic benchmarks, then tables and figures; a second run skips both cells and rebuilds the same
bytes."""

import csv

import pytest

from suite.cli import main


@pytest.mark.slow
def test_demo_end_to_end_shortened(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # lm-eval's dataset cache stays in tmp_path
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--only", "lr=3e-3", "--only", "seed=0",
            "--only", "placement=pre_ln", "--only", "placement=peri_ln", "--eval-limit", "20",
            "train.max_steps=60", "train.val_every=30", "diagnostics.every=30",
            f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic_docs=2000"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # progress, then where everything is, how to open the UI, and the elapsed time
    assert "cells: 0 done" in printed and "cells: 2 done, 0 running, 0 left" in printed
    assert f"periln mlflow-ui --out {out / 'runs'}" in printed and "demo finished in" in printed
    assert "Table 1 (size tiny)" in printed

    with (out / "runs.csv").open() as fh:
        rows = {r["key"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["peri_ln-tiny-lr0.003-s0", "pre_ln-tiny-lr0.003-s0"]
    for r in rows.values():
        assert r["status"] == "finished" and r["step"] == "60"
        assert 0.0 <= float(r["eval/piqa/acc_norm"]) <= 1.0 and float(r["val_loss"]) > 0
        assert r["diag/var/layer_04"] and r["diag/grad_norm/block_04"]  # tiny: 4 blocks
    md = (out / "tables.md").read_text()
    assert "| Pre-LN | 0.003 | 0/1 |" in md and "| Peri-LN | 0.003 | 0/1 |" in md
    with (out / "claims.csv").open() as fh:
        fh.readline()
        overall = {r["id"]: r for r in csv.DictReader(fh) if r["group"] == "overall"}
    # synthetic benchmarks, one seed, 4 layers: a wiring check, never a verdict on the paper
    assert overall["acc_peri_gt_pre"]["verdict"] == "not testable here"
    assert "synthetic" in overall["acc_peri_gt_pre"]["reason"]
    assert overall["acc_post_lowest"]["verdict"] == "not testable here"
    assert "not testable here" in printed and "WIRING CHECK" in printed
    for stem in ("loss_curves", "loss_vs_lr", "layer_variance", "layer_maxabs", "layer_grad_norm"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 5000
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    # again: nothing re-runs, the same files come back byte for byte
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "skipped pre_ln-tiny-lr0.003-s0: finished" in printed
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before

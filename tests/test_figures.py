"""Figures from hand-built runs.csv / curves.csv: produced, non-empty, PNG and PDF, the same bytes on
a rebuild, layer figures only when the runs logged the diagnostics."""

import pytest

from suite import figures as F
from suite import records as R

ARMS = ("post_ln", "pre_ln", "peri_ln")


def write_records(folder, diagnostics=True):
    rows, points = [], []
    for arm_i, arm in enumerate(ARMS):
        for lr in (0.001, 0.003, 0.01):
            for seed in (0, 1):
                key = f"{arm}-tiny-lr{lr:g}-s{seed}"
                status = "diverged" if (arm == "pre_ln" and lr == 0.01) else "finished"
                row = dict(key=key, arm=arm, placement=arm, size="tiny", lr=lr, seed=seed, status=status,
                           val_loss=2.0 + 0.2 * arm_i + 0.1 * seed + (0.3 if lr == 0.01 else 0.0),
                           commit="abc")
                for step in range(0, 101, 10):
                    points.append((key, "train/loss", step, 5.0 - 0.02 * step + 0.1 * seed + 0.2 * arm_i))
                    if step % 50 == 0 and step:
                        points.append((key, "val/loss", step, 4.0 - 0.01 * step + 0.2 * arm_i))
                if diagnostics:
                    for layer in range(5):
                        row[f"diag/var/layer_{layer:02d}"] = (1.0, 2.0 ** layer, 1.0 + layer)[arm_i]
                        row[f"diag/maxabs/layer_{layer:02d}"] = (3.0, 10.0 * 3 ** layer, 3.0 + layer)[arm_i]
                        for step in (0, 50, 100):
                            points.append((key, f"diag/var/layer_{layer:02d}", step,
                                           (1.0, (1 + step / 50) ** layer, 1.0 + layer)[arm_i]))
                    for block in range(1, 5):
                        row[f"diag/grad_norm/block_{block:02d}"] = (0.1 * block, 1.0 / block, 0.5)[arm_i]
                rows.append(row)
    R.write_runs_csv(rows, folder / "runs.csv")
    R.write_curves_csv(points, folder / "curves.csv")
    return folder / "runs.csv"


def test_figures_are_written_non_empty_and_rebuild_identically(tmp_path):
    runs = write_records(tmp_path)
    files = F.build(runs, tmp_path / "figs")
    stems = sorted({p.stem for p in files})
    assert stems == ["depth_over_training", "layer_grad_norm", "layer_maxabs", "layer_variance",
                     "loss_curves", "loss_vs_lr"]
    for p in files:
        data = p.read_bytes()
        assert len(data) > 5000, p.name
        assert data[:8] == b"\x89PNG\r\n\x1a\n" if p.suffix == ".png" else data[:5] == b"%PDF-"
    again = F.build(runs, tmp_path / "figs2")
    for a, b in zip(files, again):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_layer_figures_only_when_logged(tmp_path):
    runs = write_records(tmp_path, diagnostics=False)
    stems = {p.stem for p in F.build(runs, tmp_path / "figs")}
    assert stems == {"loss_curves", "loss_vs_lr"}


def test_mean_band_over_seeds():
    # two seeds; step 20 only in the second: its mean is that seed's value alone
    steps, mean, lo, hi = F._mean_band([([0, 10], [4.0, 2.0]), ([0, 10, 20], [6.0, 3.0, 1.0])])
    assert steps == [0, 10, 20]
    assert mean == pytest.approx([5.0, 2.5, 1.0]) and lo == [4.0, 2.0, 1.0] and hi == [6.0, 3.0, 1.0]

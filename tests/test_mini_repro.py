"""The one-GPU reproduction sweep (issue 9): its cells and the settings the issue asks for."""

from models import SIZES
from suite.sweep import load_sweep


def test_mini_repro_cells_and_settings():
    sweep = load_sweep("sweeps/mini_repro.yaml")
    assert sweep.keys == [f"{p}-mini-lr{lr}-s{s}" for p in ("pre_ln", "peri_ln", "post_ln")
                          for lr in ("0.002", "0.008") for s in (0, 1)]
    cell = sweep.cells[0]
    assert SIZES[cell.size]["n_layers"] >= 16  # deep enough for depth effects
    t = cell.train
    tokens = t.seq_len * t.batch_size * t.max_steps
    assert 10e6 <= tokens <= 60e6  # tens of millions of tokens per run
    assert cell.data.tokenizer == "files:data/tokenizer/gpt2"
    assert set(sweep.eval.tasks) == {"arc_easy", "hellaswag", "piqa", "social_iqa", "winogrande"}

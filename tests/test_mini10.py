"""sweeps/mini10.yaml (issue 15): its 18 cells in order (every seed-0 cell before any seed-1 cell),
each cell's settings, and a few of its cells run at tiny size on the synthetic corpus."""

import math

import torch

from models import SIZES, build_model
from suite.sweep import load_sweep
from suite.train import train

SWEEP = "sweeps/mini10.yaml"

# (key, placement, lr, n_layers) of one seed, in the sweep's order, written out by hand
ONE_SEED = [
    ("pre_ln-mini-lr0.001", "pre_ln", 1e-3, 16),
    ("peri_ln-mini-lr0.001", "peri_ln", 1e-3, 16),
    ("post_ln-mini-lr0.001", "post_ln", 1e-3, 16),
    ("post_ln-mini-lr0.001-layers4", "post_ln", 1e-3, 4),
    ("pre_ln-mini-lr0.006", "pre_ln", 6e-3, 16),
    ("peri_ln-mini-lr0.006", "peri_ln", 6e-3, 16),
    ("pre_ln_embed_norm-mini-lr0.006", "pre_ln_embed_norm", 6e-3, 16),
    ("pre_ln-mini-lr0.02", "pre_ln", 2e-2, 16),
    ("peri_ln-mini-lr0.02", "peri_ln", 2e-2, 16),
]


def _with_seed(key: str, seed: int) -> str:
    head, sep, tail = key.partition("-layers4")
    return f"{head}-s{seed}{sep}{tail}"


def test_cells_in_order_seed_outermost():
    sweep = load_sweep(SWEEP)
    want = [_with_seed(k, s) for s in (0, 1) for k, *_ in ONE_SEED]
    assert len(want) == 18 and sweep.keys == want
    assert [c.seed for c in sweep.cells] == [0] * 9 + [1] * 9
    for cell, (_, placement, lr, layers) in zip(sweep.cells, ONE_SEED * 2):
        assert cell.placement == placement and math.isclose(cell.lr, lr)
        m = cell.model_config(vocab_size=50257)
        assert (m.d_model, m.n_layers, m.n_heads) == (512, layers, 8)
        with torch.device("meta"):  # shapes only, no memory
            model = build_model(m)
        # the embedding norm: Peri-LN's and the pre_ln_embed_norm arm's, nobody else's
        has_embed_norm = not isinstance(model.embed_norm, torch.nn.Identity)
        assert has_embed_norm == (placement in ("peri_ln", "pre_ln_embed_norm")), cell.key
        assert len(model.blocks) == layers
    assert SIZES["mini"]["n_layers"] == 16


def test_every_cell_has_the_issues_settings():
    sweep = load_sweep(SWEEP)
    assert not sweep.eval.enabled  # no lm-eval: the held-out loss is the measure
    for cell in sweep.cells:
        t, d = cell.train, cell.data
        assert cell.size == "mini"
        assert (t.seq_len, t.batch_size, t.max_steps) == (512, 64, 300)
        assert t.seq_len * t.batch_size * t.max_steps == 9_830_400  # ~10M tokens a run
        assert t.precision == "auto" and t.compile == "auto"  # bf16-mixed and compiled on a GPU
        assert cell.diagnostics.enabled and cell.diagnostics.every == 20
        assert d.source == "data/corpus" and d.tokenizer == "files:data/tokenizer/gpt2"
        assert d.val_source is None and d.val_fraction > 0  # held-out articles of the corpus
        assert t.val_every <= t.max_steps and t.val_batches * t.batch_size * (t.seq_len + 1) <= d.val_tokens
        assert d.max_tokens >= t.max_steps * t.batch_size * (t.seq_len + 1)  # no window seen twice


def test_cells_run_at_tiny_size_on_the_synthetic_corpus(tmp_path, one_thread):
    tiny = ["size=tiny", "data.source=synthetic", "data.tokenizer=byte", "data.synthetic_docs=300",
            "data.max_tokens=20000", "data.val_tokens=4000", f"data.cache_dir={tmp_path / 'cache'}",
            f"out_dir={tmp_path / 'runs'}", "train.seq_len=32", "train.batch_size=4",
            "train.max_steps=4", "train.val_every=4", "train.val_batches=1", "train.ckpt_every=4",
            "train.log_every=2", "diagnostics.every=2"]
    sweep = load_sweep(SWEEP, tiny)
    picks = ["post_ln-tiny-lr0.001-s0-layers4", "pre_ln_embed_norm-tiny-lr0.006-s0", "peri_ln-tiny-lr0.02-s1"]
    for cell in sweep.select([f"key={k}" for k in picks]):
        result = train(cell)
        assert result["status"] == "finished" and result["step"] == 4, result
        assert math.isfinite(result["val_loss"])

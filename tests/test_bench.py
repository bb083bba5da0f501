"""`periln bench`: the FLOP and MFU sums (suite.cost) against numbers worked out by hand, the
largest-batch search, and the verb itself on a tiny model on CPU (a real Trainer fit with real
MLflow logging)."""

import argparse
import json
import math

import numpy as np
import pytest

from suite import bench, cost
from suite.cli import main
from suite.config import load_run_config
from suite.data import PackedWindows

# tiny (d 64, 4 layers, 4 heads, d_ff 176), vocabulary 300, sequence 64, worked out by hand:
#   per block: attention q, k, v, o 4 x 64 x 64 = 16,384; SwiGLU 3 x 64 x 176 = 33,792
#   pre_ln:  + 2 norms x 64 = 128 -> 50,304 x 4 = 201,216, + final norm 64           = 201,280
#   peri_ln: + 4 norms x 64 = 256 -> 50,432 x 4 = 201,728, + embedding and final norm = 201,856
#   LM head 64 x 300 = 19,200; attention term 12 x 4 x 64 x 64 = 196,608
#   pre_ln:  6 x (201,280 + 19,200) + 196,608 = 1,322,880 + 196,608 = 1,519,488 FLOPs per token
#   peri_ln: 6 x (201,856 + 19,200) + 196,608 = 1,326,336 + 196,608 = 1,522,944
HAND = {"pre_ln": (201_280, 1_519_488), "peri_ln": (201_856, 1_522_944)}


@pytest.mark.parametrize("placement", sorted(HAND))
def test_flops_per_token_and_mfu_by_hand(placement):
    cfg = load_run_config(None, [f"placement={placement}", "size=tiny", "train.seq_len=64"])
    mc, non_emb = cost.non_embedding_params(cfg, 300)
    assert non_emb == HAND[placement][0]
    assert cost.flops_per_token(mc, 64, non_emb) == HAND[placement][1]
    # 10,000 tokens/s against a 1e12 FLOP/s peak: 1,519,488 x 1e4 / 1e12
    assert cost.mfu(1_519_488, 1e4, 1e12) == pytest.approx(0.01519488, rel=1e-12)
    assert cost.mfu(1_519_488, 1e4, None) is None


def test_the_reference_models_mfu():
    # docs/stack.md: a "411M" LLaMA-style model (d 1024, 24 layers, vocab 100352, seq 2048) trained
    # at 140k tokens/s on an H100 is MFU 0.435. With d_ff 2816 (8/3 d rounded up to 256), by hand:
    #   non-embedding 24 x (4 x 1024^2 + 3 x 1024 x 2816 + 2 x 1024) + 1024 = 308,331,520
    #   + LM head 1024 x 100352 = 102,760,448 -> 411,091,968 (the "411M")
    #   6 x 411,091,968 + 12 x 24 x 1024 x 2048 = 2,466,551,808 + 603,979,776 = 3,070,531,584
    #   x 140e3 / 989e12 = 0.4347
    import torch

    from models import ModelConfig, build_model

    mc = ModelConfig(vocab_size=100352, d_model=1024, n_layers=24, n_heads=16, d_ff=2816, max_seq_len=2048)
    with torch.device("meta"):
        non_emb = build_model(mc).num_params(non_embedding=True)
    assert non_emb == 308_331_520
    assert cost.flops_per_token(mc, 2048, non_emb) == 3_070_531_584
    assert cost.mfu(3_070_531_584, 140e3, 989e12) == pytest.approx(0.4347, abs=1e-4)


def test_random_tokens_are_read_by_the_real_loader(tmp_path):
    cfg = load_run_config(None, [f"data.cache_dir={tmp_path}", "train.seq_len=16", "train.batch_size=2"])
    data = bench.RandomTokenData(cfg, vocab_size=100277, tokens=5000)
    train_dir, _ = data.caches()
    windows = PackedWindows(train_dir, 16)
    assert windows.meta["dtype"] == "uint32" and len(windows) == (5000 - 1) // 16
    tokens = np.concatenate([windows[i].numpy() for i in range(len(windows))])
    assert tokens.min() >= 0 and tokens.max() < 100277 and len(np.unique(tokens)) > 4000
    assert bench.loader_tokens_per_s(data, batches=5) > 0


def test_largest_batch_search_doubles_then_bisects(tmp_path, monkeypatch):
    tried = []

    def trial(args, placement, batch, out):
        tried.append(batch)
        return {"fits": batch <= 37} if batch <= 37 else {"fits": False, "error": "out of memory"}

    monkeypatch.setattr(bench, "_trial", trial)
    args = argparse.Namespace(batch=16, max_batch_limit=1024)
    found = bench.find_max_batch(args, "pre_ln", tmp_path)
    assert found["max_batch"] == 37
    assert tried[:3] == [16, 32, 64] and set(tried[3:]) <= set(range(33, 64))
    assert len(tried) <= 3 + 5  # log2(32) bisection steps


@pytest.mark.slow
def test_bench_on_cpu_prints_the_columns_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--size", "tiny", "--placements", "pre_ln", "peri_ln", "--seq", "64",
                 "--batch", "4", "--steps", "6", "--warmup", "2", "--vocab", "300", "--overhead",
                 "--json", str(out), "--out", str(tmp_path / "work"), "--cache-dir", str(tmp_path / "cache"),
                 "train.log_every=2", "diagnostics.every=4"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for column in ("placement", "tokens/s/device", "MFU", "peak mem", "step time", "overhead"):
        assert column in printed
    assert "MFU peak: n/a (no known peak" in printed  # CPU: no invented peak
    report = json.loads(out.read_text())
    assert "989e12" not in json.dumps(report) and "mfu_formula" in report["meta"]
    rows = {r["placement"]: r for r in report["results"]}
    assert set(rows) == {"pre_ln", "peri_ln"}
    for name, r in rows.items():
        assert set(bench.RESULT_KEYS) <= set(r)
        assert r["status"] == "finished" and r["mfu"] is None and r["peak_flops"] is None
        assert r["flops_per_token"] == HAND[name][1] and r["non_embedding_params"] == HAND[name][0]
        assert r["tokens_per_s_per_device"] == pytest.approx(64 * 4 / r["step_time_s"])
        assert r["precision"] == "32-true" and r["compile"] is False and r["logger"] == "mlflow"
        assert math.isfinite(r["overhead_pct"]) and r["bare_step_time_s"] > 0
        assert r["loader_tokens_per_s"] > r["tokens_per_s_per_device"]
        assert f"\n{name} " in printed

    # the runs logged to a real MLflow store (suite.tracking), with the training metrics
    from suite import tracking

    store = tracking.Store(tracking.store_uri(tmp_path / "work" / "runs"))
    runs = store.runs(store.experiment_id("bench", create=False))
    assert set(runs) == {"pre_ln-tiny-lr0.001-s0", "peri_ln-tiny-lr0.001-s0"}
    for record in runs.values():
        assert "train/loss" in record.metrics and "diag/probe_loss" in record.metrics


def test_bench_with_a_stated_peak_reports_mfu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--size", "tiny", "--placements", "pre_ln", "--seq", "64", "--batch", "4",
                 "--steps", "4", "--warmup", "1", "--vocab", "300", "--logger", "csv", "--peak-flops", "1e12",
                 "--data", "synthetic", "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--placements", "pre_ln", "train.log_every=2"])  # an override after --placements
    printed = capsys.readouterr().out
    assert code == 0, printed
    (r,) = json.loads(out.read_text())["results"]
    assert "MFU peak: 1e+12 FLOP/s (--peak-flops)" in printed
    # the synthetic corpus uses the byte tokenizer: vocabulary 257, LM head 64 x 257
    assert r["vocab_size"] == 257 and r["flops_per_token"] == 6 * (201_280 + 64 * 257) + 196_608
    assert r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s_per_device"] / 1e12, rel=1e-12)

"""End to end: a tiny model trained briefly on the synthetic corpus scores clearly above chance on
benchmarks built from that corpus, through lm-eval's real task configs, and `periln eval` records it.
An untrained model on the same items stays at chance: the margin comes from what was learned."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from evals.tasks import AVERAGE_KEY, PAPER_TASKS
from suite.cli import main as periln
from suite.config import load_run_config
from suite.evaluate import evaluate_checkpoint
from suite.synthetic_tasks import write_synthetic_benchmarks
from suite.train import LitLM, train

N = 100  # items per task: 500 in all
CHANCE = {"arc_easy": 1 / 4, "hellaswag": 1 / 4, "piqa": 1 / 2, "social_iqa": 1 / 3, "winogrande": 1 / 2}


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """~300 steps of a 0.23M-parameter model (seconds on a CPU); its run dir, benchmarks, caches."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra intra-op threads only add overhead
    root = tmp_path_factory.mktemp("e2e")
    cfg = load_run_config(None, [
        f"out_dir={root / 'runs'}", "sweep=e2e", f"data.cache_dir={root / 'cache'}",
        "train.progress_bar=false", "train.max_steps=300", "lr=1e-2", "train.seq_len=64",
        "train.batch_size=16", "data.synthetic_docs=3000", "train.val_every=1000", "train.ckpt_every=1000"])
    train(cfg)
    bench = root / "bench"
    write_synthetic_benchmarks(bench, n=N, tasks=PAPER_TASKS)
    yield cfg, bench, root
    torch.set_num_threads(before)


def z_above_chance(metrics: dict, n: int) -> float:
    """(correct - expected) / sd over all items, each item a Bernoulli(chance of its task)."""
    correct = sum(metrics[f"eval/{t}/acc"] * n for t in PAPER_TASKS)
    mean = sum(CHANCE[t] * n for t in PAPER_TASKS)
    sd = math.sqrt(sum(CHANCE[t] * (1 - CHANCE[t]) * n for t in PAPER_TASKS))
    return (correct - mean) / sd


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


@pytest.mark.slow
def test_trained_model_scores_above_chance(run, tmp_path):
    cfg, bench, root = run
    result = evaluate_checkpoint(cfg.run_dir, "paper", data_dir=bench, cache_dir=tmp_path / "hf",
                                 batch_size=64)
    metrics, meta = result["metrics"], result["meta"]
    # all five together: z > 6 is p < 1e-9 under chance
    assert z_above_chance(metrics, N) > 6, metrics
    for task in PAPER_TASKS:  # and every task on its own: one-sided binomial p < 1e-3
        k = round(metrics[f"eval/{task}/acc"] * N)
        assert binomial_tail(k, N, CHANCE[task]) < 1e-3, (task, k, metrics)
    assert metrics[AVERAGE_KEY] > sum(CHANCE.values()) / 5 + 0.15
    assert (meta["key"], meta["step"]) == (cfg.key, 300)
    assert meta["requests"] == N * (4 + 4 + 2 + 3 + 2) and meta["requests_per_s"] > 0

    # the control: the same model untrained scores chance on the same items
    untrained = root / "untrained.ckpt"
    torch.manual_seed(0)
    lit = LitLM(cfg.to_dict(), 257)
    torch.save({"hyper_parameters": dict(lit.hparams), "state_dict": lit.state_dict(), "global_step": 0},
               untrained)
    control = evaluate_checkpoint(untrained, "paper", data_dir=bench, cache_dir=tmp_path / "hf",
                                  batch_size=64)
    assert abs(z_above_chance(control["metrics"], N)) < 3, control["metrics"]


@pytest.mark.slow
def test_periln_eval_writes_eval_json(run, tmp_path, capsys):
    cfg, bench, root = run
    code = periln(["eval", cfg.key, "--out-dir", str(root / "runs"), "--tasks", "piqa,winogrande",
                   "--limit", "20", "--data-dir", str(bench), "--cache-dir", str(tmp_path / "hf")])
    out = capsys.readouterr().out
    assert code == 0
    saved = json.loads((cfg.run_dir / "eval.json").read_text())
    assert set(saved["metrics"]) == {"eval/piqa/acc", "eval/piqa/acc_stderr", "eval/piqa/acc_norm",
                                     "eval/piqa/acc_norm_stderr", "eval/piqa/bpb", "eval/winogrande/acc",
                                     "eval/winogrande/acc_stderr", "eval/winogrande/bpb"}
    meta = saved["meta"]
    assert meta["limit"] == 20 and meta["tasks"]["piqa"]["samples"] == 20
    assert meta["tasks"]["winogrande"]["version"] == 1.0
    assert meta["checkpoint"] == str(cfg.run_dir / "checkpoints" / "last.ckpt")
    assert (meta["size"], meta["prefix_eot"]) == ("tiny", True)  # suite-trained: documents joined by EOT
    assert "requests/s" in out and f"wrote {cfg.run_dir / 'eval.json'}" in out
    assert f"piqa{'':<11}{saved['metrics']['eval/piqa/acc']:>8.4f}" in out


@pytest.mark.slow
def test_lm_eval_command_line_wrapper(run, tmp_path):
    """lm-eval's own CLI (its full task index) with the `periln` model and our --data-dir."""
    cfg, bench, root = run
    out = tmp_path / "lm_eval_out"
    proc = subprocess.run(
        [sys.executable, "-m", "suite.lm_eval_cli", "run", "--model", "periln",
         "--model_args", f"checkpoint={cfg.run_dir},batch_size=16", "--tasks", "piqa",
         "--data-dir", str(bench), "--limit", "10", "--output_path", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = list(out.rglob("results_*.json"))
    piqa = json.loads(result.read_text())["results"]["piqa"]
    assert 0 <= piqa["acc,none"] <= 1 and "acc_norm,none" in piqa

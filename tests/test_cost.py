"""suite/cost.py: the FLOPs formula against numbers worked out by hand, the peak FLOP/s of a
device (Lightning's table, the H200 at its dense figure, none for a CPU), and `periln plan`
estimating cost without the trainer."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import ModelConfig
from suite import cost
from suite.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]


def test_flops_per_token_by_hand():
    # d 8, 2 layers, d_ff 16, vocab 10, seq 4 (pre_ln: no biases, RMSNorm gains only):
    #   per block q, k, v, o 4 x 8 x 8 = 256; SwiGLU 3 x 8 x 16 = 384; 2 norms x 8 = 16 -> 656
    #   non-embedding 2 x 656 + final norm 8 = 1,320; LM head 8 x 10 = 80
    #   6 x (1,320 + 80) + 12 x 2 x 8 x 4 = 8,400 + 768 = 9,168 FLOPs per token
    mc = ModelConfig(vocab_size=10, d_model=8, n_layers=2, n_heads=2, d_ff=16, max_seq_len=4)
    assert cost.flops_per_token(mc, 4, 1_320) == 9_168
    # 1,000 tokens/s per device against a 1e7 FLOP/s peak: 9,168 x 1e3 / 1e7
    assert cost.mfu(9_168, 1e3, 1e7) == pytest.approx(0.9168, rel=1e-12)
    assert cost.mfu(9_168, 1e3, None) is None


def test_a_runs_flops_per_token_counts_its_built_model():
    # tiny pre_ln (d 64, 4 layers, d_ff 176) at vocab 1,000, seq 32, by hand:
    #   per block 4 x 64 x 64 + 3 x 64 x 176 + 2 x 64 = 16,384 + 33,792 + 128 = 50,304
    #   non-embedding 4 x 50,304 + 64 = 201,280; LM head 64 x 1,000 = 64,000
    #   6 x 265,280 + 12 x 4 x 64 x 32 = 1,591,680 + 98,304 = 1,689,984
    cfg = load_run_config(None, ["placement=pre_ln", "size=tiny", "train.seq_len=32"])
    mc, non_emb = cost.non_embedding_params(cfg, 1000)
    assert (mc.vocab_size, non_emb) == (1000, 201_280)
    assert cost.run_flops_per_token(cfg, 1000) == 1_689_984


def test_budget_and_vocabulary():
    cfg = load_run_config(None, ["train.seq_len=128", "train.batch_size=4", "train.accumulate=2",
                                 "train.tokens=100000"])
    assert cost.tokens_per_step(cfg) == 1024  # 128 x 4 x 2 x 1 device x 1 node
    assert cost.resolve_budget(cfg).train.max_steps == 97  # 100,000 // 1,024
    assert cost.vocab_size("tiktoken:cl100k_base") == 100277
    assert cost.vocab_size("byte") == 257  # loaded: not in the table


def test_a_cpu_has_no_peak_unless_one_is_given():
    from lightning.fabric.utilities.throughput import get_available_flops

    cpu = torch.device("cpu")
    assert get_available_flops(cpu, torch.float32) is None  # Lightning knows CUDA and XLA devices only
    for precision in ("32-true", "bf16-mixed"):
        peak, text = cost.device_peak(cpu, precision)
        assert peak is None
        assert text == f"n/a (no known peak for {cost.device_name(cpu)} at precision {precision}; " \
                       "pass --peak-flops)"
    assert cost.device_peak(cpu, "32-true", override=2e14) == (2e14, "2e+14 FLOP/s (--peak-flops)")


def test_precisions_name_their_matmul_dtype():
    assert [cost.compute_dtype(p) for p in ("bf16-mixed", "bf16-true", "16-mixed", "32-true", "32",
                                            "64-true", "transformer-engine")] == [
        torch.bfloat16, torch.bfloat16, torch.float16, torch.float32, torch.float32, torch.float64, None]


@pytest.mark.parametrize("name,precision,peak", [
    # NVIDIA's datasheets, dense (half the with-sparsity figure): H100 SXM 1,979 -> 989.4 TFLOP/s,
    # H100 PCIe 1,513 -> 756, A100 312 (dense); H200 SXM as the H100 SXM
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4e12),
    ("NVIDIA H100 PCIe", "bf16-mixed", 756e12),
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312e12),
    ("NVIDIA H200", "bf16-mixed", 989.4e12),
    ("NVIDIA H200", "16-mixed", 989.4e12),
    ("NVIDIA H200 NVL", "bf16-mixed", None),  # no dense figure known: n/a, never a sparse one
    ("NVIDIA Future GPU 9000", "bf16-mixed", None),
])
def test_gpu_peaks_by_device_name(monkeypatch, name, precision, peak):
    # no GPU here: only the name the CUDA driver would report is stood in; Lightning's lookup runs
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    got, text = cost.device_peak(torch.device("cuda", 0), precision)
    assert got == (pytest.approx(peak) if peak else None)
    assert name in text and (text.startswith("n/a") == (peak is None))


@pytest.mark.gpu
def test_the_gpu_here_has_a_peak():
    device = torch.device("cuda", 0)
    peak, text = cost.device_peak(device, "bf16-mixed")
    name = torch.cuda.get_device_name(device)
    if "HBM3" in name or name == "NVIDIA H200":  # H100 SXM, H200 SXM
        assert peak == pytest.approx(989.4e12), text


def test_plan_estimates_cost_without_the_trainer():
    code = ("import sys; from suite.sweep import load_sweep, format_plan; "
            "s = load_sweep('sweeps/paper.yaml'); print(format_plan(s, s.cells).splitlines()[-1]); "
            "print(sorted(m for m in sys.modules if m == 'suite.train' or m.startswith('lightning')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.splitlines()
    assert out[-1] == "[]"
    assert out[-2].startswith("total: 6.75T tokens") and "of 989.4 TFLOP/s per GPU" in out[-2]

"""Diagnostics (suite/diagnostics.py): the probe against a direct computation, the spike, overflow
and divergence rules on constructed sequences, and whole runs through train(): metrics logged
under their documented names, an injected divergence that ends as "diverged" while the other
cells of the sweep finish."""

import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger

from models import ConfigError, ModelConfig, build_model
from suite.config import DiagnosticsConfig, load_run_config
from suite.diagnostics import FP16_MAX, Diagnostics, overflows, probe
from suite.sweep import sweep_from_dict
from suite.train import train


@pytest.fixture(autouse=True)
def float32_one_thread():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)  # tiny models: intra-op threads only add contention
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


def small(placement="peri_ln", **kw):
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=61, d_model=32, n_layers=3, n_heads=4, max_seq_len=32,
                                placement=placement, **kw))
    with torch.no_grad():  # gains away from one, so mean and max differ
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m


def lower_median(values):
    s = sorted(values)
    return s[(len(s) - 1) // 2]


# -------------------------------------------------------------------------------------- probe

def test_probe_matches_a_direct_computation():
    m = small("peri_ln")
    torch.manual_seed(1)
    tokens = torch.randint(0, 61, (3, 17))
    got = probe(m, tokens)

    logits, hidden = m(tokens[:, :-1], return_hidden=True)
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    assert len(hidden) == 4
    for l, h in enumerate(hidden):
        vals = h.detach().flatten().tolist()
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)
        mx = max(abs(v) for v in vals)
        med = lower_median([abs(v) for v in vals])
        assert got[f"diag/var/layer_{l:02d}"] == pytest.approx(var, rel=1e-4)
        assert got[f"diag/maxabs/layer_{l:02d}"] == pytest.approx(mx, rel=1e-6)
        assert got[f"diag/max_over_median/layer_{l:02d}"] == pytest.approx(mx / med, rel=1e-6)
    for l, block in enumerate(m.blocks, start=1):
        sq = sum(float((p.grad.double() ** 2).sum()) for p in block.parameters())
        assert got[f"diag/grad_norm/block_{l:02d}"] == pytest.approx(math.sqrt(sq), rel=1e-4)
    gains = torch.cat([w for b in m.blocks for w in (b.attn_out_norm.weight, b.mlp_out_norm.weight)])
    assert got["diag/out_norm_gain_mean"] == pytest.approx(gains.mean().item(), rel=1e-6)
    assert got["diag/out_norm_gain_max"] == pytest.approx(gains.max().item(), rel=1e-6)
    # the probe leaves the parameters' .grad alone (a training step's gradients are not touched)
    before = [p.grad.clone() for p in m.parameters()]
    probe(m, tokens)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, m.parameters()))


def test_out_norm_gains_are_gemmas_one_plus_w_and_absent_without_output_norms():
    g = small("gemma")
    got = probe(g, torch.randint(0, 61, (2, 9)))
    w = torch.cat([b.attn_out_norm.weight for b in g.blocks] + [b.mlp_out_norm.weight for b in g.blocks])
    assert got["diag/out_norm_gain_mean"] == pytest.approx(1 + w.mean().item(), rel=1e-6)
    assert got["diag/out_norm_gain_max"] == pytest.approx(1 + w.max().item(), rel=1e-6)
    pre = probe(small("pre_ln"), torch.randint(0, 61, (2, 9)))
    assert not any(k.startswith("diag/out_norm_gain") for k in pre)
    assert "diag/grad_norm/block_03" in pre and "diag/var/layer_03" in pre


def test_fp16_overflow_means_a_value_above_65504():
    m = small("pre_ln")
    tokens = torch.randint(0, 61, (2, 9))
    assert not overflows(probe(m, tokens), fp16=False)
    with torch.no_grad():
        m.embed.weight.mul_(1e7)  # the stream now holds values far above the FP16 maximum
    got = probe(m, tokens)
    assert got["diag/maxabs/layer_00"] > FP16_MAX
    assert overflows(got, fp16=False)
    assert overflows({"diag/maxabs/layer_00": 1.0, "_nonfinite/layer_00": 1.0}, fp16=True)
    assert not overflows({"diag/maxabs/layer_00": 1.0, "_nonfinite/layer_00": 1.0}, fp16=False)


# ------------------------------------------------------------------------------- the step rules

def test_spike_rule_r_times_trailing_median_after_a_full_window():
    d = Diagnostics(DiagnosticsConfig(spike_ratio=3.0, spike_window=5))
    d.threshold = None
    norms = [100.0, 1, 1, 1, 1,  # window fills; 100 at the start is no spike (window not full)
             2.9,  # median of [100, 1, 1, 1, 1] is 1: 2.9 < 3 -> no spike
             3.1,  # median of [1, 1, 1, 1, 2.9] is 1: spike
             1.0,
             10.0,  # median of [1, 1, 2.9, 3.1, 1] is 1: spike
             float("nan"),  # non-finite norms are not spikes and stay out of the window
             2.0]  # median of [1, 2.9, 3.1, 1, 10] is 2.9: no spike
    for step, g in enumerate(norms, start=1):
        d.observe(step, 2.0, g)
    assert d.spikes == 2
    assert list(d.history) == [2.9, 3.1, 1.0, 10.0, 2.0]
    assert d.fp16_overflow == 0


def test_no_spike_below_the_absolute_floor_however_large_the_ratio():
    # a zero-init gate (ReZero): the first norms are near zero and grow by orders of magnitude as
    # the gates open; only a norm above spike_floor (0.01 by default) can be a spike
    d = Diagnostics(DiagnosticsConfig(spike_ratio=3.0, spike_window=5))
    d.threshold = None
    norms = [1e-6] * 5 + [1e-5,  # 10 x the median 1e-6, but below the floor: no spike
                          1e-3,  # 1000 x the median 1e-6, still below 0.01: no spike
                          0.02,  # median of [1e-6, 1e-6, 1e-6, 1e-5, 1e-3] is 1e-6; 0.02 > 0.01: spike
                          0.009]  # median 1e-5, ratio 900, but 0.009 < 0.01: no spike
    for step, g in enumerate(norms, start=1):
        d.observe(step, 2.0, g)
    assert d.spikes == 1
    # without the floor the same sequence counts 4: the floor is what keeps them out
    d = Diagnostics(DiagnosticsConfig(spike_ratio=3.0, spike_window=5, spike_floor=0.0))
    d.threshold = None
    for step, g in enumerate(norms, start=1):
        d.observe(step, 2.0, g)
    assert d.spikes == 4
    with pytest.raises(ValueError, match="spike_floor must be >= 0"):
        DiagnosticsConfig(spike_floor=-1.0)


def test_fp16_scaler_skips_are_counted_apart_and_never_called_overflow():
    # the GradScaler makes non-finite gradient norms by design (calibration, after each growth):
    # an fp16 run with such steps but finite activations has 0 overflows
    d = Diagnostics(DiagnosticsConfig())
    d._fp16 = True
    for step, g in enumerate([float("inf"), float("nan"), 1.0, float("inf"), 1.1], start=1):
        d.observe(step, 2.0, g)
    assert d.scaler_skips == 3 and d.fp16_overflow == 0 and d.diverged is None
    fields = d.result_fields()
    assert fields["scaler_skips"] == 3 and fields["fp16_overflow"] == 0 and fields["fp16_first_step"] is None


def test_a_sub_layer_output_above_65504_is_an_overflow_even_when_the_stream_is_normalized():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, max_seq_len=32,
                                placement="post_ln"))
    tokens = torch.randint(0, 61, (2, 17))
    with torch.no_grad():
        m.blocks[1].mlp.down_proj.weight.mul_(1e8)  # F_m(x) of block 2 blows up; N(x + F) stays ~1
    got = probe(m, tokens)
    stream_peak = max(v for k, v in got.items() if k.startswith("diag/maxabs/"))
    assert stream_peak < 100  # Post-LN normalizes the stream
    # the sub-layer output, recomputed by hand with a hook-free forward of block 2's MLP input
    with torch.no_grad():
        _, hidden = m(tokens[:, :-1], return_hidden=True)
        b = m.blocks[1]
        h = b.attn_post_norm(hidden[1] + b.attn(hidden[1]))  # post_ln: y = N(x + F(x))
        by_hand = b.mlp(h).abs().max().item()
    assert by_hand > FP16_MAX
    assert got["diag/sublayer_maxabs"] == pytest.approx(by_hand, rel=1e-5)
    assert overflows(got, fp16=False)


def test_divergence_rules():
    d = Diagnostics(DiagnosticsConfig(diverge_loss=5.0, diverge_patience=3))
    for step, loss in enumerate([6, 6, 4, 6, 6, 5, 6, 6, 6, 9], start=1):
        d.observe(step, loss, 1.0)
    # the run 6,6 is broken by 4; 5 is not above 5; the third consecutive step above is step 9
    assert d.diverged["step"] == 9 and "above 5" in d.diverged["reason"]
    d = Diagnostics(DiagnosticsConfig(diverge_loss=5.0, diverge_patience=3))
    d.observe(1, 3.0, 1.0)
    d.observe(2, float("nan"), float("nan"))
    d.observe(3, float("nan"), float("nan"))
    assert d.diverged == {"step": 2, "reason": "non-finite loss (nan)"}
    assert d.result_fields()["status"] == "diverged" and d.result_fields()["diverged_step"] == 2


def test_diagnostics_config_is_validated_with_one_line_per_problem():
    with pytest.raises(ConfigError) as err:
        load_run_config(None, ["diagnostics.every=0", "diagnostics.bogus=1"])
    lines = str(err.value).splitlines()
    assert any("every must be >= 1" in line for line in lines)
    assert any("diagnostics.bogus: unknown key" in line for line in lines)
    assert load_run_config(None, ["diagnostics.spike_ratio=1e1"]).diagnostics.spike_ratio == 10.0


# ------------------------------------------------------------------------ through train()

class MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def at(self, step):
        out = {}
        for s, metrics in self.rows:
            if s == step:
                out.update(metrics)
        return out


class Grab(L.Callback):
    def on_train_end(self, trainer, pl_module):
        self.module = pl_module


@pytest.fixture
def tiny_run(tmp_path):
    return [f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}",
            "train.progress_bar=false", "train.seq_len=32", "train.batch_size=4",
            "data.synthetic_docs=500", "train.val_every=1000", "train.ckpt_every=1000"]


def test_run_logs_the_probe_under_the_documented_names(tiny_run):
    cfg = load_run_config(None, tiny_run + ["placement=peri_ln", "train.max_steps=10",
                                            "diagnostics.every=5", "diagnostics.check_every=5"])
    diag, grab, logger = Diagnostics(cfg.diagnostics), Grab(), MemoryLogger()
    result = train(cfg, callbacks=[diag, grab], logger=logger)
    assert result["status"] == "finished" and result["step"] == 10
    assert result["spikes"] == 0 and result["fp16_overflow"] == 0
    L_ = 4  # tiny: 4 blocks
    names = ([f"diag/{k}/layer_{l:02d}" for k in ("var", "maxabs", "max_over_median") for l in range(L_ + 1)]
             + [f"diag/grad_norm/block_{l:02d}" for l in range(1, L_ + 1)]
             + ["diag/out_norm_gain_mean", "diag/out_norm_gain_max", "diag/spikes",
                "diag/fp16_overflow", "diag/diverged", "diag/probe_loss"])
    for step in (5, 10):
        logged = logger.at(step)
        missing = [n for n in names if n not in logged]
        assert not missing, (step, missing)
    assert not any(k.startswith("diag/var") for k in logger.at(4))  # only every K steps
    # the last probe, recomputed by hand on the final model and the kept probe batch
    assert diag.probe_tokens.shape == (cfg.diagnostics.probe_batch, cfg.train.seq_len + 1)
    again = probe(grab.module.model, diag.probe_tokens)
    for name in names[: 3 * (L_ + 1) + L_]:
        assert logger.at(10)[name] == pytest.approx(again[name], rel=1e-6), name
    # train/grad_norm (pre-clip, logged by LitLM) is what the spike rule saw
    assert len(diag.history) == 10


class InjectNaN(L.Callback):
    """After optimizer step `at`, one weight becomes NaN: the next step's loss is NaN."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                pl_module.model.blocks[0].mlp.down_proj.weight.fill_(float("nan"))


def test_injected_nan_ends_as_diverged_and_stays_diverged_on_resume(tiny_run):
    cfg = load_run_config(None, tiny_run + ["train.max_steps=40", "diagnostics.check_every=4"])
    result = train(cfg, callbacks=[InjectNaN(at=6)])
    assert result["status"] == "diverged"
    assert result["diverged_step"] == 7  # the first step whose loss is NaN
    assert result["step"] == 8  # stopped at the next host read (check_every=4), not at 40
    on_disk = json.loads((cfg.run_dir / "result.json").read_text())
    assert on_disk["status"] == "diverged" and on_disk["diverged_step"] == 7
    again = train(cfg)  # resubmitted: resumes from last.ckpt, and stays diverged
    assert again["status"] == "diverged" and again["diverged_step"] == 7 and again["step"] == 8


def test_huge_lr_cell_diverges_while_the_other_cells_of_the_sweep_finish(tmp_path):
    sweep = sweep_from_dict({
        "name": "diverge",
        "base": {"out_dir": str(tmp_path / "runs"), "size": "tiny",
                 "data": {"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 500},
                 "train": {"max_steps": 30, "seq_len": 32, "batch_size": 4, "val_every": 1000,
                           "ckpt_every": 1000, "warmup_fraction": 0.0, "grad_clip": 0.0,
                           "progress_bar": False},
                 "diagnostics": {"diverge_patience": 5, "check_every": 5}},
        "grid": {"placement": ["post_ln"], "lr": [1e-3, 50.0, 3e-3]},
    }, "test sweep")
    results = {cell.lr: train(cell) for cell in sweep.cells}  # what a sweep does, cell by cell
    assert results[50.0]["status"] == "diverged" and results[50.0]["step"] < 30
    assert 1 <= results[50.0]["diverged_step"] <= results[50.0]["step"]
    for lr in (1e-3, 3e-3):
        assert results[lr]["status"] == "finished" and results[lr]["step"] == 30
        assert "diverged_step" not in results[lr]


def test_diagnostics_can_be_switched_off(tiny_run):
    cfg = load_run_config(None, tiny_run + ["train.max_steps=3", "diagnostics.enabled=false"])
    result = train(cfg)
    assert result["status"] == "finished" and "spikes" not in result

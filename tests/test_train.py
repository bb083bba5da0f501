"""Training: schedule, optimizer groups, exact resume, loss falls for every paper placement."""

import math

import lightning as L
import pytest

from models import ConfigError
from suite.config import load_run_config
from suite.train import LitLM, lr_factor, train


def test_lr_schedule_warmup_then_cosine_to_floor():
    total, warmup, floor = 100, 10, 0.1
    assert lr_factor(0, total, warmup, floor) == pytest.approx(0.1)  # (0 + 1) / 10
    assert lr_factor(9, total, warmup, floor) == pytest.approx(1.0)
    assert lr_factor(10, total, warmup, floor) == pytest.approx(1.0)
    # halfway through the decay: floor + (1 - floor) / 2
    assert lr_factor(55, total, warmup, floor) == pytest.approx(0.55)
    assert lr_factor(100, total, warmup, floor) == pytest.approx(0.1)
    mid = 10 + 90 / 3
    assert lr_factor(round(mid), total, warmup, floor) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 3)))


def test_weight_decay_on_2d_weights_only():
    cfg = load_run_config(None, ["train.weight_decay=0.3"])
    lit = LitLM(cfg.to_dict(), vocab_size=257)
    opt = lit.configure_optimizers()["optimizer"]
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.3 for p in g["params"]}
    for name, p in lit.named_parameters():
        assert (id(p) in decayed) == (p.ndim == 2), name
    assert any(n.endswith("norm.weight") for n, p in lit.named_parameters() if id(p) not in decayed)


class LossRecorder(L.Callback):
    def __init__(self, crash_at=None):
        self.losses, self.crash_at = {}, crash_at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])
        if trainer.global_step == self.crash_at:
            raise RuntimeError("simulated crash")


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, run_overrides):
    common = run_overrides + ["train.max_steps=40", "train.ckpt_every=10", "train.val_every=15",
                              "train.log_every=5", "lr=3e-3"]
    straight = LossRecorder()
    train(load_run_config(None, common + [f"out_dir={tmp_path / 'a'}"]), [straight])

    crashing = LossRecorder(crash_at=27)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(load_run_config(None, common + [f"out_dir={tmp_path / 'b'}"]), [crashing])
    resumed = LossRecorder()
    result = train(load_run_config(None, common + [f"out_dir={tmp_path / 'b'}"]), [resumed])

    assert min(resumed.losses) == 21  # restarted after the step-20 checkpoint
    assert result["step"] == 40
    for step, loss in resumed.losses.items():
        assert loss == straight.losses[step], step  # bit-identical on CPU


@pytest.mark.parametrize("placement", ["pre_ln", "post_ln", "peri_ln"])
def test_loss_falls_well_below_start_and_unigram_entropy(tmp_path, run_overrides, placement):
    cfg = load_run_config(None, run_overrides + [f"placement={placement}", "train.max_steps=200",
                                                 "lr=3e-3", "train.val_every=100"])
    rec = LossRecorder()
    result = train(cfg, [rec])
    first = sum(rec.losses[s] for s in range(1, 6)) / 5
    last = sum(rec.losses[s] for s in range(196, 201)) / 5
    assert first > 4.5  # ~ln(257) = 5.55 at init
    # the synthetic corpus's unigram entropy is ~3.0 nats per byte (measured on its 4M tokens)
    assert last < 2.0 and result["val_loss"] < 2.0, (first, last, result)


def test_bf16_mixed_precision_runs_on_cpu(tmp_path, run_overrides):
    cfg = load_run_config(None, run_overrides + ["train.max_steps=5", "train.precision=bf16-mixed"])
    result = train(cfg)
    assert math.isfinite(result["train_loss"])


def test_token_budget_sets_steps(tmp_path, run_overrides):
    # 8 sequences x 64 tokens = 512 tokens per step
    cfg = load_run_config(None, run_overrides + ["train.tokens=5120", "train.val_every=5"])
    assert train(cfg)["step"] == 10


def test_a_finished_run_is_not_retrained_and_keeps_its_result(tmp_path, run_overrides):
    cfg = load_run_config(None, run_overrides + ["train.max_steps=6", "train.val_every=3"])
    first = train(cfg)
    path = cfg.run_dir / "result.json"
    before = path.read_bytes()
    rec = LossRecorder()
    again = train(cfg, [rec])
    assert rec.losses == {} and again == first and again["val_loss"] is not None
    assert path.read_bytes() == before
    # a longer budget under the same key is another schedule (the cosine decays over the steps):
    # refused, naming the setting, and nothing of the finished run changes
    longer = load_run_config(None, run_overrides + ["train.max_steps=8", "train.val_every=3"])
    with pytest.raises(ConfigError, match=r"train.max_steps: recorded '6', now '8'.*sweep=NAME or out_dir="):
        train(longer, [rec])
    assert rec.losses == {} and path.read_bytes() == before


def test_val_bpb_is_the_val_loss_per_byte(tmp_path, run_overrides):
    """The byte tokenizer on the synthetic held-out documents: tokens = their bytes + one end-of-text
    per document (it carries no text), so val/bpb = val/loss * (B + D) / (B ln 2), B and D counted
    here from the documents themselves."""
    from suite import synthetic
    from suite.data import SYNTHETIC_VAL_SEED

    cfg = load_run_config(None, run_overrides + ["train.max_steps=4", "train.val_every=4"])
    result = train(cfg)
    docs = synthetic.documents(max(200, cfg.data.synthetic_docs // 50), SYNTHETIC_VAL_SEED)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    assert n_bytes + len(docs) < cfg.data.val_tokens  # the whole held-out set is in the cache
    want = result["val_loss"] * (n_bytes + len(docs)) / (n_bytes * math.log(2))
    assert result["val_bpb"] == pytest.approx(want, rel=1e-5)
    logged = (cfg.run_dir / "logs").rglob("metrics.csv")
    assert any("val/bpb" in f.read_text().splitlines()[0] for f in logged)

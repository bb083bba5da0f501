"""suite/train.py's checkpoints: each written once (last.ckpt a link to the newest step<N>.ckpt), the
final state saved as a file when no periodic checkpoint is at the last step, and never written
through the link into a periodic checkpoint."""

import os
import signal

import lightning as L
import pytest
import torch

from suite.config import load_run_config
from suite.train import Interrupted, train


def _step_in(path):
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_last_is_a_link_when_the_final_step_is_a_checkpoint_step(tmp_path, run_overrides):
    cfg = load_run_config(None, run_overrides + ["train.max_steps=20", "train.ckpt_every=10",
                                                 "train.val_every=10"])
    train(cfg)
    ckpts = cfg.run_dir / "checkpoints"
    last = ckpts / "last.ckpt"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step20.ckpt"]  # top-1 kept
    assert last.is_symlink() and os.readlink(last) == "step20.ckpt"  # relative: the run dir can move
    assert _step_in(last) == 20


def test_final_state_is_a_file_and_the_periodic_checkpoint_is_untouched(tmp_path, run_overrides):
    cfg = load_run_config(None, run_overrides + ["train.max_steps=25", "train.ckpt_every=10",
                                                 "train.val_every=10"])
    train(cfg)
    ckpts = cfg.run_dir / "checkpoints"
    last = ckpts / "last.ckpt"
    assert not last.is_symlink() and _step_in(last) == 25
    assert _step_in(ckpts / "step20.ckpt") == 20  # not overwritten through a link


class _SigtermAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_save_on_sigterm_leaves_the_link_and_the_periodic_checkpoint(tmp_path, run_overrides):
    cfg = load_run_config(None, run_overrides + ["train.max_steps=30", "train.ckpt_every=10",
                                                 "train.val_every=10"])
    try:
        with pytest.raises(Interrupted):
            train(cfg, [_SigtermAt(14)])  # last.ckpt links step10.ckpt when the signal comes
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ckpts = cfg.run_dir / "checkpoints"
    last, saved = ckpts / "last.ckpt", ckpts / "interrupted.ckpt"
    assert _step_in(saved) == 15  # the step the signal arrived in
    assert os.readlink(last) == "step10.ckpt" and _step_in(ckpts / "step10.ckpt") == 10  # untouched
    # the same run resumes from the newest (step 15) and links last.ckpt again at its final step
    result = train(cfg)
    assert result["step"] == 30 and result["resumed_from"] == str(saved) and not saved.exists()
    assert last.is_symlink() and os.readlink(last) == "step30.ckpt" and _step_in(last) == 30


def test_an_unreadable_last_checkpoint_is_moved_aside_and_the_run_resumes_from_the_newest_readable(
        tmp_path, run_overrides, capsys):
    cfg = load_run_config(None, run_overrides + ["train.max_steps=20", "train.ckpt_every=10",
                                                 "train.val_every=10"])
    try:
        with pytest.raises(Interrupted):
            train(cfg, [_SigtermAt(14)])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ckpts = cfg.run_dir / "checkpoints"
    saved = ckpts / "interrupted.ckpt"  # step 15, the newest
    whole = saved.read_bytes()
    saved.write_bytes(whole[: len(whole) // 2])  # a save cut short (disk full, node lost)
    capsys.readouterr()
    result = train(cfg)
    err = capsys.readouterr().err
    assert result["step"] == 20 and result["resumed_from"] == str(ckpts / "last.ckpt")  # -> step10
    kept = ckpts / "interrupted.ckpt.unreadable"
    assert kept.read_bytes() == whole[: len(whole) // 2]  # kept, not deleted
    assert len(result["set_aside"]) == 1 and f"moved aside to {kept.name}" in result["set_aside"][0]
    assert "unreadable checkpoint" in err and "resuming from last.ckpt" in err
    # garbage and nothing else: the run starts over, and says so
    other = load_run_config(None, run_overrides + ["train.max_steps=4", f"out_dir={tmp_path / 'g'}"])
    (other.run_dir / "checkpoints").mkdir(parents=True)
    (other.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"garbage")
    result = train(other)
    assert result["step"] == 4 and "resumed_from" not in result
    assert "resuming from the start" in capsys.readouterr().err

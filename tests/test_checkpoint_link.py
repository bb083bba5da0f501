"""suite/train.py's checkpoints: each written once (last.ckpt a link to the newest step<N>.ckpt), the
final state saved as a file when no periodic checkpoint is at the last step, and never written
through the link into a periodic checkpoint."""

import os

import torch

from suite.config import load_run_config
from suite.train import train


def _step_in(path):
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


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
    # a longer budget resumes from last.ckpt (step 25) and links last.ckpt again at step 30
    longer = load_run_config(None, run_overrides + ["train.max_steps=30", "train.ckpt_every=10",
                                                    "train.val_every=10"])
    assert train(longer)["step"] == 30
    assert last.is_symlink() and os.readlink(last) == "step30.ckpt" and _step_in(last) == 30

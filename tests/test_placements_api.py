"""The placement API itself: the registry is complete on import (a new file in the folder included),
blocks hand out their output norms and residual projections by reference."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from models import ModelConfig, build_model
from models.block import BlockBase

ROOT = Path(__file__).resolve().parents[1]
ZOO = {"b2t", "deepnorm", "dyt", "gemma", "hybridnorm", "lns", "mix_ln", "olmo2", "peri_ln", "post_ln",
       "pre_ln", "pre_ln_embed_norm", "sandwich_ln"}


def fresh_python(code: str, path: Path) -> str:
    """`code` run in a new interpreter that imports the project from `path` (nothing loaded before)."""
    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=path, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def test_placements_lists_every_placement_on_import_without_any_call():
    got = fresh_python("from models.placements import PLACEMENTS; print(' '.join(sorted(PLACEMENTS)))",
                       ROOT)
    assert set(got.split()) == ZOO


def test_a_new_file_in_the_placements_folder_is_picked_up(tmp_path):
    shutil.copytree(ROOT / "models", tmp_path / "models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "models" / "placements" / "my_arm.py").write_text(
        "from models.placements import BlockLayout, Placement, SubLayout, register\n\n\n"
        "@register('my_arm')\nclass MyArm(Placement):\n"
        "    '''Mine: y = x + F(N(x)).'''\n\n"
        "    def layout(self, layer, n_layers):\n"
        "        return BlockLayout(attn=SubLayout(in_norm=True), mlp=SubLayout(in_norm=True))\n")
    (tmp_path / "models" / "placements" / "_helper.py").write_text("raise RuntimeError('imported')\n")
    got = fresh_python("from models.placements import PLACEMENTS; print(' '.join(sorted(PLACEMENTS)))",
                       tmp_path)
    assert set(got.split()) == ZOO | {"my_arm"}  # and the "_" module was not imported


def tiny(placement, n_layers=3):
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=50, d_model=32, n_layers=n_layers, n_heads=4,
                                   max_seq_len=16, placement=placement))


@pytest.mark.parametrize("placement, slots", [
    ("peri_ln", ("attn_out_norm", "mlp_out_norm")), ("gemma", ("attn_out_norm", "mlp_out_norm")),
    ("olmo2", ("attn_out_norm", "mlp_out_norm")), ("pre_ln", ()), ("post_ln", ()), ("lns", ()),
    ("b2t", ()), ("hybridnorm", ())])
def test_blocks_name_their_output_norms(placement, slots):
    for block in tiny(placement).blocks:
        assert isinstance(block, BlockBase)
        got = block.output_norms()
        assert len(got) == len(slots)
        assert all(a is getattr(block, s) for a, s in zip(got, slots))


def test_residual_projections_are_the_attention_and_mlp_output_projections():
    for placement in ("pre_ln", "b2t", "hybridnorm"):
        for b in tiny(placement).blocks:
            got = b.residual_projections()
            assert len(got) == 2 and got[0] is b.attn.o_proj and got[1] is b.mlp.down_proj


def test_lns_scale_lives_in_the_block_not_in_its_norms():
    """Block 4 of LNS is a Pre-LN block with the same weights whose input-norm gains are halved
    (1/sqrt(4) = 0.5; RMSNorm is linear in its gain), and no norm module carries a scale."""
    lns, pre = tiny("lns", n_layers=4), tiny("pre_ln", n_layers=4)
    pre.load_state_dict(lns.state_dict())
    with torch.no_grad():  # N(x) * 0.5 == N with gain 0.5, for RMSNorm's linear gain
        for b in pre.blocks[3:]:
            b.attn_in_norm.weight.mul_(0.5)
            b.mlp_in_norm.weight.mul_(0.5)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(lns.blocks[3](x), pre.blocks[3](x))
    assert not any(hasattr(m, "scale") for m in lns.modules())
    assert isinstance(lns.blocks[0].attn_out_norm, nn.Identity)

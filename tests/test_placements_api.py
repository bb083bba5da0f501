"""The placement API itself: the registry is complete on import (a new file in the folder included),
blocks hand out their output norms and residual projections by reference, and placement arguments
are typed fields parsed once with one-line errors."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

from models import ConfigError, ModelConfig, build_model
from models.block import BlockBase
from models.placements import Placement, arg, get_placement

ROOT = Path(__file__).resolve().parents[1]


def declared_names(folder: Path) -> set[str]:
    """The names the placement files register, read from their text (`@register("name",
    aliases=(...))`): what the registry must hold, found without importing anything."""
    names = set()
    for path in folder.glob("*.py"):
        if path.stem == "base" or path.stem.startswith("_"):
            continue
        for name, aliases in re.findall(r'@register\(\s*["\'](\w+)["\'](?:\s*,\s*aliases=\(([^)]*)\))?',
                                        path.read_text()):
            names |= {name, *re.findall(r'["\'](\w+)["\']', aliases)}
    return names


ZOO = declared_names(ROOT / "models" / "placements")


def test_the_declared_names_are_read_right():
    assert {"pre_ln", "peri_ln", "sandwich_ln", "mix_ln", "rezero"} <= ZOO and "base" not in ZOO


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


# ------------------------------------------------------------- placement arguments: typed fields

def test_arguments_are_coerced_to_the_declared_type_once():
    args = get_placement("mix_ln").parse_args({"alpha": "1e-1"})  # YAML 1.1 reads 1e-1 as text
    assert args.alpha == 0.1 and type(args.alpha) is float
    assert type(get_placement("dyt").parse_args({"alpha0_attn": 2}).alpha0_attn) is float
    assert get_placement("hybridnorm").parse_args({}).star is False  # the declared default
    with pytest.raises(dataclasses.FrozenInstanceError):
        args.alpha = 0.5
    assert get_placement("mix_ln", alpha="0.5").args.alpha == 0.5  # the constructor parses too


@pytest.mark.parametrize("name, args, message", [
    ("mix_ln", {"alpha": "a lot"}, "placement 'mix_ln': argument alpha must be a number in [0, 1] "
     "(the share of Post-LN blocks); got 'a lot' (type str, expected float)"),
    ("mix_ln", {"alpha": True}, "argument alpha must be a number in [0, 1] (the share of Post-LN "
     "blocks); got True (type bool, expected float)"),
    ("mix_ln", {"alpha": [0.1]}, "got [0.1] (type list, expected float)"),
    ("mix_ln", {"alpha": "2"}, "argument alpha must be a number in [0, 1] (the share of Post-LN "
     "blocks); got '2'"),
    ("dyt", {"alpha0_ffn": "nan"}, "placement 'dyt': argument alpha0_ffn must be a positive number; "
     "got 'nan'"),
    ("hybridnorm", {"star": "yes"}, "placement 'hybridnorm': argument star must be true or false; "
     "got 'yes' (type str, expected bool)"),
    ("hybridnorm", {"star": 1}, "got 1 (type int, expected bool)"),
    ("mix_ln", {"alpah": 0.5}, "placement 'mix_ln': has no argument 'alpah'; did you mean 'alpha'? "
     "(its arguments: alpha)"),
    ("peri_ln", {"alpha": 0.5}, "placement 'peri_ln': has no argument 'alpha' (its arguments: none)"),
    ("mix_ln", {"alpah": 0.5, "alpha": "x"}, "has no argument 'alpah'; did you mean 'alpha'? (its "
     "arguments: alpha); argument alpha must be"),  # every problem, one line
])
def test_bad_arguments_are_one_clear_line(name, args, message):
    with pytest.raises(ConfigError) as err:
        get_placement(name).parse_args(args)
    assert message in str(err.value) and "\n" not in str(err.value)


class Declared(Placement):
    """Not registered: a placement declaring one argument of each supported type."""

    @dataclasses.dataclass(frozen=True)
    class Args:
        n: int = arg(2, must="an integer >= 1", check=lambda n: n >= 1)
        where: Literal["first", "last"] = arg("last")
        tag: str = arg("x")


def test_int_literal_and_str_arguments():
    assert Declared.parse_args({"n": "3", "where": "first"}) == Declared.Args(n=3, where="first")
    assert type(Declared.parse_args({"n": 4.0}).n) is int
    for bad, said in (({"n": 2.5}, "argument n must be an integer >= 1; got 2.5 (type float, expected int)"),
                      ({"n": 0}, "argument n must be an integer >= 1; got 0"),
                      ({"where": "middle"}, "argument where must be one of 'first', 'last'; got 'middle'"),
                      ({"tag": 3}, "argument tag must be a string; got 3 (type int, expected str)")):
        with pytest.raises(ConfigError) as err:
            Declared.parse_args(bad)
        assert said in str(err.value)


@pytest.mark.parametrize("fields, problem", [
    ("alpha: float = 0.5", None),
    ("alpha: float = arg(2.0, check=lambda a: a < 1)", "the default 2.0 fails its check"),
    ("alpha: float = arg('big')", "the default 'big' is not a number"),
    ("alpha: tuple = arg(())", "unsupported argument type"),
    ("alpha: float = dataclasses.field()", "needs a default"),
])
def test_a_bad_declaration_fails_when_the_class_is_registered(fields, problem):
    ns = {"dataclasses": dataclasses, "arg": arg, "Placement": Placement}
    exec("class Bad(Placement):\n    @dataclasses.dataclass(frozen=True)\n    class Args:\n"
         f"        {fields}\n", ns)
    if problem is None:
        ns["Bad"].check_declaration()
        return
    with pytest.raises(TypeError, match=re.escape(problem)):
        ns["Bad"].check_declaration()


def test_args_must_be_a_frozen_dataclass():
    class Loose(Placement):
        @dataclasses.dataclass
        class Args:
            alpha: float = 0.5

    with pytest.raises(TypeError, match="frozen dataclass"):
        Loose.check_declaration()

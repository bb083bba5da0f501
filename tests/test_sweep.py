"""Sweep files: golden run keys of the shipped sweeps, expansion rules, and every validation error
(one line per problem naming the file, the key and what was expected)."""

import itertools
import math
import textwrap

import pytest

from models import ConfigError
from suite.cost import estimate
from suite.sweep import load_sweep

SMOKE, PAPER = "sweeps/smoke.yaml", "sweeps/paper.yaml"


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_smoke_sweep_golden_keys():
    sweep = load_sweep(SMOKE)
    assert sweep.name == "smoke"
    assert sweep.keys == [
        "pre_ln-tiny-lr0.001-s0", "pre_ln-tiny-lr0.001-s1", "pre_ln-tiny-lr0.003-s0",
        "pre_ln-tiny-lr0.003-s1", "post_ln-tiny-lr0.001-s0", "post_ln-tiny-lr0.001-s1",
        "post_ln-tiny-lr0.003-s0", "post_ln-tiny-lr0.003-s1", "peri_ln-tiny-lr0.001-s0",
        "peri_ln-tiny-lr0.001-s1", "peri_ln-tiny-lr0.003-s0", "peri_ln-tiny-lr0.003-s1",
    ]
    assert sweep.counts() == {"placement": {"pre_ln": 4, "post_ln": 4, "peri_ln": 4},
                              "lr": {"0.001": 6, "0.003": 6}, "seed": {"0": 6, "1": 6}}
    cell = sweep.cells[0]
    assert (cell.sweep, cell.size, cell.data.source) == ("smoke", "tiny", "synthetic")
    assert cell.data.tokenizer == "byte"
    assert cell.lr == 0.001 and isinstance(cell.lr, float)  # YAML 1.1 read "1e-3" as a string


def test_paper_sweep_golden_keys_and_settings():
    sweep = load_sweep(PAPER)
    placements, sizes = ["pre_ln", "post_ln", "peri_ln"], ["400m", "1.5b", "3.2b"]
    lrs, seeds = ["0.00025", "0.0005", "0.001", "0.002", "0.004"], range(5)
    expected = [f"{p}-{s}-lr{lr}-s{seed}"
                for p, s, lr, seed in itertools.product(placements, sizes, lrs, seeds)]
    assert sweep.keys == expected and len(expected) == 225
    by_key = {c.key: c for c in sweep.cells}
    c400, c32 = by_key["peri_ln-400m-lr0.001-s0"], by_key["pre_ln-3.2b-lr0.004-s4"]
    assert c400.data.source == "hf:mlfoundations/dclm-baseline-1.0"
    assert c400.data.tokenizer == "tiktoken:cl100k_base"
    assert c400.train.tokens == 30_000_000_000 and c400.train.precision == "bf16-mixed"
    # overrides: 400m keeps 16 x 2 per GPU, the larger sizes 4 x 8 (same tokens per step); 3.2b on FSDP
    assert (c400.train.batch_size, c400.train.accumulate, c400.train.strategy) == (16, 2, "ddp")
    assert (c32.train.batch_size, c32.train.accumulate, c32.train.strategy) == (4, 8, "fsdp")
    assert sweep.eval.tasks == ("arc_easy", "hellaswag", "piqa", "social_iqa", "winogrande")
    # 30e9 tokens / (16 x 2 x 8 GPUs x 2048) = 57220.46 -> 57220 steps
    cost = estimate([c400])[c400.key]
    assert cost.tokens == 57220 * 16 * 2 * 8 * 2048


def test_cost_estimate_matches_hand_count():
    cell = load_sweep(SMOKE).cells[0]  # pre_ln tiny: d 64, 4 layers, d_ff 176, byte vocab 257, seq 128
    per_layer = 4 * 64 * 64 + 3 * 64 * 176 + 2 * 64  # q,k,v,o + SwiGLU + two RMSNorm gains
    matmul = 4 * per_layer + 64 + 257 * 64  # + final norm + LM head
    per_token = 6 * matmul + 12 * 4 * 64 * 128
    cost = estimate([cell], mfu=0.5, peak_flops=1e12)[cell.key]
    assert cost.tokens == 150 * 16 * 128
    assert cost.flops == pytest.approx(cost.tokens * per_token)
    assert cost.gpu_hours == pytest.approx(cost.tokens * per_token / 0.5e12 / 3600)


def test_extra_axes_overrides_exclude_and_only(tmp_path):
    path = write(tmp_path, """
        name: t
        base: {size: tiny, train: {max_steps: 10}}
        grid:
          placement: [pre_ln, {name: mix_ln, args: {alpha: 0.5}}]
          model.qk_norm: [true, false]
          seed: [0]
        overrides:
          - when: {placement: mix_ln}
            set: {train.grad_clip: 0.5}
          - when: {model.qk_norm: true, placement: [pre_ln]}
            set: {lr: 2e-3}
        exclude:
          - {placement: mix_ln, model.qk_norm: false}
        """)
    sweep = load_sweep(path)
    assert sweep.keys == ["pre_ln-tiny-lr0.002-s0-qk_normTrue", "pre_ln-tiny-lr0.001-s0-qk_normFalse",
                          "mix_ln_alpha0.5-tiny-lr0.001-s0-qk_normTrue"]
    assert sweep.excluded == 1
    grad_clip = {c.key: c.train.grad_clip for c in sweep.cells}
    assert list(grad_clip.values()) == [1.0, 1.0, 0.5]
    assert [c.key for c in sweep.select(["placement=pre_ln", "model.qk_norm=false"])] == [
        "pre_ln-tiny-lr0.001-s0-qk_normFalse"]
    assert [c.key for c in sweep.select(["lr=2e-3", "lr=1e-2"])] == ["pre_ln-tiny-lr0.002-s0-qk_normTrue"]
    assert len(sweep.select(["key=pre_ln-tiny-lr0.002-s0-qk_normTrue"])) == 1
    with pytest.raises(ConfigError, match=r"--only sizee: unknown run field 'sizee'; did you mean 'size'"):
        sweep.select(["sizee=tiny"])
    with pytest.raises(ConfigError, match="matches no cell"):
        sweep.select(["seed=7"])
    # command-line overrides apply to every cell
    assert {c.train.max_steps for c in load_sweep(path, ["train.max_steps=3"]).cells} == {3}


def errors(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    return str(info.value).splitlines(), str(path)


def test_every_problem_is_one_line_naming_file_key_and_expectation(tmp_path):
    lines, f = errors(tmp_path, """
        name: bad
        grdi: {}
        base:
          train: {max_stepz: 10, batch_size: many}
        grid:
          placement: [pre_ln, peri_lm]
          lrr: [1e-3]
          lr: [1e-3, 3e-3x]
          seed: [0.5]
          size: [400M]
        """)
    placement = lines.pop(3)  # the known names grow with the registry: checked up to them
    assert placement.startswith(f"{f}: grid.placement[1]: unknown placement 'peri_lm'. Did you mean "
                                "peri_ln, pre_ln? Known placements: ")
    assert lines == [
        f"{f}: grdi: unknown key; did you mean 'grid'?",
        f"{f}: base.train.max_stepz: unknown key; did you mean 'max_steps'?",
        f"{f}: base.train.batch_size: expected a number; got 'many'",
        f"{f}: grid.lrr: unknown run field 'lrr'; did you mean 'lr'?",
        f"{f}: grid.lr[1]: expected a number; got '3e-3x'",
        f"{f}: grid.seed[0]: expected an integer; got 0.5",
        f"{f}: grid.size[0]: unknown size '400M'; did you mean '400m'?; known: tiny, tiny-deep, small, mini, "
        "400m, 1.5b, 3.2b",
    ]


@pytest.mark.parametrize("text, line", [
    ("grid: {lr: [1e-3]}", "{f}: name: required (the MLflow experiment and the runs' folder name)"),
    ("name: a b", "{f}: name: expected letters, digits, '.', '_' or '-'; got 'a b'"),
    ("name: x\ngrid: {lr: 1e-3}", "{f}: grid.lr: expected a list of values; got '1e-3'"),
    ("name: x\ngrid: {seed: []}", "{f}: grid.seed: expected at least one value"),
    ("name: x\ngrid: {out_dir: [a, b]}",
     "{f}: grid.out_dir: out_dir is one per sweep, not an axis; set it in base"),
    ("name: x\ngrid: {train.max_step: [1]}",
     "{f}: grid.train.max_step: unknown field of train 'max_step'; did you mean 'max_steps'?"),
    ("name: x\ngrid: {model.qk_nrom: [true]}",
     "{f}: grid.model.qk_nrom: unknown model field 'qk_nrom'; did you mean 'qk_norm'?"),
    ("name: x\ngrid: {model.qk_norm: [maybe]}",
     "{f}: grid.model.qk_norm[0]: expected true or false; got 'maybe'"),
    ("name: x\nbase: {sweep: y}", "{f}: base.sweep: set by the sweep's name; remove it"),
    ("name: x\noverrides: [{when: {lr: 1e-3}, set: {train.max_stepz: 1}}]",
     "{f}: overrides[0].set.train.max_stepz: unknown key; did you mean 'max_steps'?"),
    ("name: x\noverrides: [{when: {placment: pre_ln}, set: {}}]",
     "{f}: overrides[0].when.placment: unknown run field 'placment'; did you mean 'placement' or "
     "'placement_args'?"),
    ("name: x\nexclude: [{seed: abc}]", "{f}: exclude[0].seed: expected a number; got 'abc'"),
    ("name: x\neval: {tasks: [arc_easy], limt: 5}", "{f}: eval.limt: unknown key; did you mean 'limit'?"),
    ("name: x\neval: {tasks: [arc_easy], prefix_eot: maybe}",
     "{f}: eval.prefix_eot: expected true or false; got 'maybe'"),
    ("name: x\ngrid: {placement: [{name: pre_ln, arg: {}}]}",
     "{f}: grid.placement[0]: expected a placement name or {{name: ..., args: {{...}}}}; "
     "got {{'name': 'pre_ln', 'arg': {{}}}}"),
    ("name: x\ngrid: {seed: [0, 0]}",
     "{f}: grid: cells share run key 'pre_ln-tiny-lr0.001-s0' (1 keys repeat); give an axis distinct values "
     "or set `variant` in an override"),
])
def test_validation_errors(tmp_path, text, line):
    lines, f = errors(tmp_path, text)
    assert lines == [line.format(f=f)]


def test_cell_level_problems_name_the_cell(tmp_path):
    lines, f = errors(tmp_path, """
        name: x
        base: {train: {max_steps: 0}}
        grid: {seed: [0, 1]}
        """)
    # reported once although both cells have it
    assert lines == [f"{f} (cell seed=0 and 1 more): train.max_steps: must be >= 1; got 0"]


def test_eval_prefix_eot_setting(tmp_path):
    """Unset: None (the model's own convention, decided when it is scored); else the bool given."""
    assert load_sweep(write(tmp_path, "name: x\neval: {tasks: [piqa]}")).eval.prefix_eot is None
    sweep = load_sweep(write(tmp_path, "name: x\neval: {tasks: [piqa], prefix_eot: false}"))
    assert sweep.eval.prefix_eot is False and sweep.eval.to_dict()["prefix_eot"] is False


def test_yaml_exponent_strings_are_numbers(tmp_path):
    path = write(tmp_path, """
        name: x
        base: {train: {tokens: 1e6}}
        grid: {lr: [1e-3, 3.0e-4, 2E-2]}
        """)
    sweep = load_sweep(path)
    assert [c.lr for c in sweep.cells] == [0.001, 0.0003, 0.02]
    assert all(c.train.tokens == 1_000_000 and isinstance(c.train.tokens, int) for c in sweep.cells)
    assert math.isclose(sweep.cells[1].lr, 3e-4)

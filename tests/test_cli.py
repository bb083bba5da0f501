"""The command line: bad input is one clear line, a non-zero exit, and nothing written."""

import pytest

from suite.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("override, fragments", [
    ("placement=peri-ln", ["unknown placement 'peri-ln'", "Did you mean peri_ln", "pre_ln"]),
    ("trian.max_steps=3", ["trian", "unknown key", "did you mean 'train'"]),
    ("train.max_steps=many", ["train.max_steps", "expected a number"]),
    ("train.batch_size=1.5", ["train.batch_size", "expected an integer"]),
    ("lr=[1,2]", ["lr", "expected float"]),
    ("model.norm=batchnorm", ["model.norm", "layernorm, rmsnorm"]),
])
def test_bad_config_value(capsys, tmp_path, override, fragments):
    code, _, err = run(capsys, "train", f"out_dir={tmp_path / 'runs'}", override)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("periln: error: ")
    for f in fragments:
        assert f in lines[0]
    assert not (tmp_path / "runs").exists()


def test_yaml_numeric_string_is_coerced(tmp_path):
    from suite.config import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\ntrain: {max_steps: 2e2}\n")  # YAML 1.1 reads both as strings
    cfg = load_run_config(path)
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float) and cfg.train.max_steps == 200


@pytest.mark.parametrize("override, fragment", [
    ("data.source={tmp}/missing.jsonl", "no such file"),
    ("data.tokenizer=files:{tmp}/no_tokenizer", "not found"),
])
def test_bad_data_or_tokenizer_writes_nothing(capsys, tmp_path, override, fragment):
    code, _, err = run(capsys, "train", f"out_dir={tmp_path / 'runs'}",
                       f"data.cache_dir={tmp_path / 'cache'}", override.format(tmp=tmp_path))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_config_file_problems(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    code, _, err = run(capsys, "train", "--config", str(bad))
    assert code == 2 and "not valid YAML" in err and str(bad) in err
    code, _, err = run(capsys, "train", "--config", str(tmp_path / "none.yaml"))
    assert code == 2 and "not found" in err


def test_placements_and_sizes_listings(capsys):
    code, out, _ = run(capsys, "placements")
    assert code == 0 and "y = x + N_out(F(N_in(x)))" in out and "alias of peri_ln" in out
    code, out, _ = run(capsys, "sizes")
    assert code == 0 and "400m" in out and "ours" in out

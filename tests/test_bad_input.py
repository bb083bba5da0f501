"""Bad input, as a hostile user and an operator give it: every case ends with exit code 2 and exactly
one error line that names the input and the way out, no traceback, and nothing new on disk.

Each case is (id, files to write first, argv, text the one line must hold). Files are written in a
fresh working directory; the snapshot of that directory is taken after they are written, so "nothing
new" means nothing the command itself left (the token cache under .cache/ is shared data, not a
result: it is left out of the comparison)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from suite.cli import main

SWEEP = "name: t\nbase: {train: {max_steps: 2}}\ngrid: {placement: [pre_ln]}\n"
PROFILE = "timeout_min: 10\ncpus_per_task: 1\n"


class Evil:
    """A pickle that runs a command when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _evil(path: Path) -> None:
    torch.save({"hyper_parameters": Evil(), "state_dict": {}}, path)


RUNS_HEAD = "key,arm,placement,size,lr,seed,status\n"
RUN_ROW = "pre_ln-tiny-lr0.001-s0,pre_ln,pre_ln,tiny,0.001,0,finished\n"

CASES = [
    # ---- the command line
    ("override-bad-yaml", {}, ["train", "lr=[1e-3"], "override 'lr=[1e-3': the value is not valid YAML"),
    ("override-no-key", {}, ["train", "=3"], "no key before '='"),
    ("override-no-equals", {}, ["train", "lr"], "expected key=value"),
    ("override-negative-lr", {}, ["train", "lr=-1"], "lr: must be > 0"),
    ("override-zero-seq-len", {}, ["train", "train.seq_len=0"], "train.seq_len: must be >= 1"),
    ("override-unknown-placement", {}, ["train", "placement=peri"], "unknown placement 'peri'"),
    ("override-unknown-size", {}, ["train", "size=huge"], "unknown size 'huge'"),
    ("override-bad-precision", {}, ["train", "train.precision=fp8"], "train.precision: expected one of"),
    ("override-heads", {}, ["train", "model.n_heads=3"], "must be divisible by n_heads"),
    ("override-typo", {}, ["train", "train.max_stpes=3"], "max_steps"),
    ("override-not-a-number", {}, ["train", "train.max_steps=many"],
     "train.max_steps: expected a number; got 'many'"),
    ("eval-batch-size-0", {}, ["eval", "x", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
    ("submit-parallel-negative", {"s.yaml": SWEEP}, ["submit", "s.yaml", "--parallel", "-1"],
     "--parallel: expected an integer >= 1"),
    ("submit-deadline-negative", {"s.yaml": SWEEP}, ["submit", "s.yaml", "--deadline", "-5"],
     "--deadline -5: expected seconds > 0"),
    ("submit-unknown-executor", {"s.yaml": SWEEP}, ["submit", "s.yaml", "--executor", "slrum"],
     "--executor 'slrum': unknown"),
    ("unknown-verb", {}, ["trian"], "invalid choice: 'trian'"),
    # ---- sweep files and run config files
    ("sweep-missing", {}, ["submit", "nope.yaml"], "nope.yaml: config file not found"),
    ("sweep-not-utf8", {"s.yaml": b"name: t\ngrid: {placement: [\xff]}\n"}, ["plan", "s.yaml"],
     "s.yaml: not UTF-8 text"),
    ("sweep-list", {"s.yaml": "- a\n- b\n"}, ["submit", "s.yaml"], "s.yaml: expected a mapping"),
    ("sweep-bad-yaml", {"s.yaml": "name: t\ngrid: {placement: [pre_ln\n"}, ["plan", "s.yaml"],
     "not valid YAML"),
    ("sweep-unknown-key", {"s.yaml": SWEEP + "gird: {}\n"}, ["plan", "s.yaml"], "gird"),
    ("sweep-grid-lr-text", {"s.yaml": SWEEP.replace("[pre_ln]}", "[pre_ln], lr: [fast]}")},
     ["plan", "s.yaml"], "expected a number; got 'fast'"),
    ("sweep-unknown-task", {"s.yaml": SWEEP + "eval: {tasks: [hellaswagg]}\n"}, ["plan", "s.yaml"],
     "unknown task 'hellaswagg'; did you mean 'hellaswag'?"),
    ("sweep-eval-limit-0", {"s.yaml": SWEEP + "eval: {tasks: [piqa], limit: 0}\n"}, ["plan", "s.yaml"],
     "eval.limit: must be >= 1"),
    ("sweep-eval-data-dir", {"s.yaml": SWEEP + "eval: {tasks: [piqa], data_dir: nowhere}\n"},
     ["submit", "s.yaml"], "eval.data_dir: nowhere is not a folder"),
    ("config-not-utf8", {"c.yaml": b"lr: \xfe\n"}, ["train", "--config", "c.yaml"], "c.yaml: not UTF-8 text"),
    ("config-list", {"c.yaml": "- lr\n"}, ["train", "--config", "c.yaml"],
     "c.yaml: expected a mapping of settings"),
    # ---- cluster profiles
    ("profile-missing", {"s.yaml": SWEEP}, ["submit", "s.yaml", "--profile", "nope.yaml"],
     "nope.yaml: config file not found"),
    ("profile-list", {"s.yaml": SWEEP, "p.yaml": "- 1\n"}, ["submit", "s.yaml", "--profile", "p.yaml"],
     "p.yaml: expected a mapping"),
    ("profile-bad-type", {"s.yaml": SWEEP, "p.yaml": "timeout_min: soon\n"},
     ["submit", "s.yaml", "--profile", "p.yaml"], "timeout_min"),
    ("profile-unknown-key", {"s.yaml": SWEEP, "p.yaml": PROFILE + "partiton: gpu\n"},
     ["submit", "s.yaml", "--profile", "p.yaml"], "partiton"),
    # ---- data and tokenizers
    ("data-missing", {}, ["train", "data.source=/nonexistent/corpus.jsonl"], "no such file"),
    ("data-too-short", {}, ["train", "train.seq_len=100000"], "fewer than one window of 100001"),
    ("tokenizer-no-folder", {}, ["train", "data.tokenizer=files:/nonexistent"], "directory /nonexistent"),
    ("tokenizer-tiktoken-typo", {}, ["train", "data.tokenizer=tiktoken:cl100k_bse"],
     "unknown tiktoken encoding 'cl100k_bse'; did you mean 'cl100k_base'?"),
    ("tokenizer-unknown-kind", {}, ["train", "data.tokenizer=sentencepiece:x"], "sentencepiece:x"),
    # ---- checkpoints
    ("ckpt-garbage", {"g.ckpt": b"garbage" * 50}, ["eval", "g.ckpt"], "not a checkpoint of tensors"),
    ("ckpt-truncated", {"t.ckpt": b"PK\x03\x04" + b"\0" * 40}, ["eval", "t.ckpt"], "t.ckpt"),
    ("ckpt-code", {"e.ckpt": _evil}, ["eval", "e.ckpt"], "GLOBAL posix.system"),
    ("ckpt-unknown-key", {}, ["eval", "pre_ln-tiny-lr9-s0"], "no checkpoint at"),
    ("ckpt-empty-run-dir", {"runs/x/k/config.yaml": "lr: 0.001\n"}, ["eval", "runs/x/k"],
     "has no checkpoints/last.ckpt"),
    # ---- CSVs
    ("csv-missing", {}, ["tables", "--from-csv", "nope.csv"], "nope.csv: no such file"),
    ("csv-no-placement", {"r/runs.csv": "key,arm,size,lr,seed,status\nk,a,tiny,0.1,0,finished\n"},
     ["tables", "--from-csv", "r/runs.csv", "--out", "o"], "missing column(s) placement"),
    ("csv-bad-number", {"r/runs.csv": RUNS_HEAD + RUN_ROW.replace("0.001,0", "fast,0")},
     ["tables", "--from-csv", "r/runs.csv", "--out", "o"], "column lr: expected a number; got 'fast'"),
    ("csv-curves-bad-value", {"r/runs.csv": RUNS_HEAD + RUN_ROW,
                              "r/curves.csv": "key,metric,step,value\nk,train/loss,1,abc\n"},
     ["tables", "--from-csv", "r/runs.csv", "--out", "o"], "curves.csv line 2, column value"),
    ("csv-no-runs", {"r/runs.csv": RUNS_HEAD}, ["tables", "--from-csv", "r/runs.csv", "--out", "o"],
     "runs.csv: no runs"),
    ("csv-curves-no-step", {"r/runs.csv": RUNS_HEAD + RUN_ROW, "r/curves.csv": "key,metric,value\n"},
     ["tables", "--from-csv", "r/runs.csv", "--out", "o"], "missing column(s) step"),
    # ---- tracking URIs
    ("uri-scheme", {"s.yaml": SWEEP}, ["status", "s.yaml", "--tracking-uri", "ftp://x/y"],
     "unsupported scheme 'ftp'"),
    ("uri-unreachable", {"s.yaml": SWEEP}, ["submit", "s.yaml", "--tracking-uri", "http://127.0.0.1:9"],
     "does not answer"),
    ("uri-no-store", {"s.yaml": SWEEP}, ["tables", "s.yaml"], "no MLflow store at"),
    ("uri-credentials", {"s.yaml": SWEEP},
     ["status", "s.yaml", "--tracking-uri", "https://bob:hunter2@127.0.0.1:9/"], "https://bob:***@127.0.0.1:9/"),
]


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if not p.relative_to(root).parts[0] == ".cache"}


@pytest.mark.parametrize("files,argv,expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_on_disk(files, argv, expect, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's errors leave through SystemExit
        code = exit.code
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("periln: error: "), err
    assert expect in lines[0], lines[0]
    assert "Traceback" not in err + out and "hunter2" not in err + out
    assert _snapshot(tmp_path) == before, sorted(_snapshot(tmp_path) - before)
    assert not (tmp_path / "pwned").exists()


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)

"""The task table, offline data and a full lm-eval run (`simple_evaluate`, built-in task configs,
local files) over fixtures in the five Hugging Face schemas, checked against accuracies worked out
here from the tasks' documented prompts; and bad input -> one clear line."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evals import data as task_data
from evals.adapter import PerilnLM
from evals.run import evaluate
from evals.tasks import (
    ALL_TASKS,
    AVERAGE_KEY,
    AVERAGE_METRIC,
    PAPER_TASKS,
    TASKS,
    paper_average,
    resolve_tasks,
)
from models import ConfigError, ModelConfig, build_model
from suite.cli import main as periln
from suite.synthetic_tasks import records, write_synthetic_benchmarks
from suite.tokenizer import ByteTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N = 12  # items per task: enough to exercise every code path, cheap with a tiny model
EOT = 256


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return build_model(ModelConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                                   max_seq_len=256, init_std=0.2)).eval()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    write_synthetic_benchmarks(d, n=N)
    return d


# --------------------------------------------------------------------------------- the table

def test_task_table_matches_lm_eval_configs():
    """Our table (hub dataset, scored split, metrics) agrees with the installed lm-eval's YAMLs."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = TaskManager(include_path=[str(p) for p in task_data.builtin_task_dirs(ALL_TASKS)],
                          include_defaults=False)

    for name, spec in TASKS.items():
        entry = manager._index[name]
        cfg = load_yaml(entry.yaml_path, resolve_func=False)
        hub = cfg["dataset_path"] + (f":{cfg['dataset_name']}" if cfg.get("dataset_name") else "")
        assert hub == spec.hub, name
        scored = cfg.get("test_split") or cfg.get("validation_split")
        assert scored == spec.split, name
        assert tuple(m["metric"] for m in cfg["metric_list"]) == spec.metrics, name


def test_task_sets_and_average_metric():
    assert PAPER_TASKS == ("arc_easy", "hellaswag", "piqa", "social_iqa", "winogrande")
    assert ALL_TASKS == (*PAPER_TASKS, "arc_challenge")
    assert AVERAGE_METRIC == {"arc_easy": "acc_norm", "hellaswag": "acc_norm", "piqa": "acc_norm",
                              "social_iqa": "acc", "winogrande": "acc", "arc_challenge": "acc_norm"}
    assert resolve_tasks("paper") == PAPER_TASKS
    assert resolve_tasks("all") == ALL_TASKS
    assert resolve_tasks("piqa, siqa,piqa") == ("piqa", "social_iqa")
    assert resolve_tasks(["arc_challenge", "paper"]) == ("arc_challenge", *PAPER_TASKS)
    metrics = {"eval/arc_easy/acc_norm": 0.5, "eval/arc_easy/acc": 0.9, "eval/hellaswag/acc_norm": 0.3,
               "eval/piqa/acc_norm": 0.6, "eval/social_iqa/acc": 0.4, "eval/winogrande/acc": 0.7}
    assert paper_average(metrics) == pytest.approx((0.5 + 0.3 + 0.6 + 0.4 + 0.7) / 5)
    del metrics["eval/winogrande/acc"]
    assert paper_average(metrics) is None


def test_unknown_task_suggests():
    with pytest.raises(ConfigError, match=r"unknown task 'hellaswg'; did you mean 'hellaswag'\?"):
        resolve_tasks("piqa,hellaswg")
    with pytest.raises(ConfigError, match="unknown task 'mmlu'; known: paper, all, arc_easy"):
        resolve_tasks("mmlu")


def test_group_config_overrides_only_the_data(bench):
    files = task_data.locate(bench, ALL_TASKS)
    cfg = task_data.group_config(files, cache_dir="/tmp/x")
    assert cfg["group"] == task_data.GROUP
    by_name = {e["task"]: e for e in cfg["task"]}
    assert set(by_name) == set(ALL_TASKS)
    arc = by_name["arc_easy"]
    assert arc == {"task": "arc_easy", "dataset_path": "json", "dataset_name": None,
                   "dataset_kwargs": {
                       "data_files": {"test": str((bench / "arc_easy_test.jsonl.gz").resolve())},
                       "cache_dir": "/tmp/x"},
                   "training_split": None, "validation_split": None, "test_split": "test"}
    wino = by_name["winogrande"]
    assert wino["dataset_kwargs"]["data_files"] == {
        "validation": str((bench / "winogrande_xl_validation.jsonl.gz").resolve())}
    assert (wino["validation_split"], wino["test_split"]) == ("validation", None)


# ---------------------------------------------------------------- a full offline lm-eval run

def direct_ll(model, context: str, continuation: str) -> float:
    """log p(continuation | EOT + context): one forward pass, byte tokens, lm-eval's rule that a
    trailing space of the context belongs to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    ctx, cont = [EOT] + list(context.encode()), list(continuation.encode())
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont[:-1]]))[0]
    lp = torch.log_softmax(logits.double(), -1)
    return float(sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


def preprocess_hellaswag(text: str) -> str:  # lm_eval/tasks/hellaswag/utils.py, written out
    import re

    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def expected_scores(model, task: str, docs: list[dict]) -> dict[str, float]:
    """acc (argmax loglikelihood) and acc_norm (argmax loglikelihood / characters of the choice)
    from each task's zero-shot prompt as its lm-eval YAML defines it; bpb: -loglikelihood of the
    correct continuation / (its UTF-8 bytes * ln 2), averaged."""
    acc, acc_norm, bpb = [], [], []
    for d in docs:
        if task.startswith("arc"):
            contexts = [f"Question: {d['question']}\nAnswer:"] * 4
            choices = d["choices"]["text"]
            conts, gold = [" " + c for c in choices], d["choices"]["label"].index(d["answerKey"])
        elif task == "hellaswag":
            ctx = preprocess_hellaswag(f"{d['activity_label']}: {d['ctx_a']} {d['ctx_b'].capitalize()}")
            choices = [preprocess_hellaswag(e) for e in d["endings"]]
            contexts, conts, gold = [ctx] * 4, [" " + c for c in choices], int(d["label"])
        elif task == "piqa":
            choices = [d["sol1"], d["sol2"]]
            contexts = [f"Question: {d['goal']}\nAnswer:"] * 2
            conts, gold = [" " + c for c in choices], d["label"]
        elif task == "social_iqa":
            choices = [d["answerA"], d["answerB"], d["answerC"]]
            contexts = [f"Q: {d['context']} {d['question']}\nA:"] * 3
            conts, gold = [" " + c for c in choices], int(d["label"]) - 1
        else:  # winogrande: the option fills the blank in the context; the rest is scored
            i = d["sentence"].index("_")
            contexts = [d["sentence"][:i] + d["option1"], d["sentence"][:i] + d["option2"]]
            choices = contexts
            conts, gold = [" " + d["sentence"][i + 1:].strip()] * 2, int(d["answer"]) - 1
        lls = np.array([direct_ll(model, c, k) for c, k in zip(contexts, conts)])
        acc.append(float(np.argmax(lls) == gold))
        acc_norm.append(float(np.argmax(lls / np.array([len(c) for c in choices])) == gold))
        bpb.append(-lls[gold] / (len(conts[gold].encode("utf-8")) * np.log(2)))
    out = {"acc": float(np.mean(acc)), "bpb": float(np.mean(bpb))}
    if "acc_norm" in TASKS[task].metrics:
        out["acc_norm"] = float(np.mean(acc_norm))
    return out


def test_offline_simple_evaluate_all_schemas(model, bench, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    lm = PerilnLM(model=model, tokenizer=ByteTokenizer(), batch_size=16, device="cpu")
    result = evaluate(lm, "all", data_dir=bench, cache_dir=tmp_path / "cache")
    metrics, meta = result["metrics"], result["meta"]
    for task in ALL_TASKS:
        want = expected_scores(model, task, records(task, N))
        for metric in TASKS[task].metrics:
            assert metrics[f"eval/{task}/{metric}"] == pytest.approx(want[metric], abs=1e-9), (task, metric)
            p = want[metric]
            assert metrics[f"eval/{task}/{metric}_stderr"] == pytest.approx(
                np.sqrt(p * (1 - p) / (N - 1)), abs=1e-9)  # lm-eval: sample std / sqrt(n)
        assert f"eval/{task}/acc_norm" not in metrics or "acc_norm" in TASKS[task].metrics
        assert metrics[f"eval/{task}/bpb"] == pytest.approx(want["bpb"], rel=1e-5), task
        info = meta["tasks"][task]
        assert (info["samples"], info["num_fewshot"], info["split"]) == (N, 0, TASKS[task].split)
        assert info["version"] == (0.0 if task == "social_iqa" else 1.0)
        assert info["data"].endswith(f"{TASKS[task].file_stem()}.jsonl.gz")
    assert metrics[AVERAGE_KEY] == pytest.approx(paper_average(metrics))
    n_requests = N * (4 + 4 + 4 + 2 + 3 + 2)  # choices per item: ARC-E, ARC-C, HS, PIQA, SIQA, WG
    assert meta["requests"] == n_requests
    assert meta["requests_per_s"] > 0
    assert meta["lm_eval_version"] and meta["limit"] is None and meta["num_fewshot"] == 0
    assert meta["bpb"].startswith("ours:")
    # the offline switch is undone afterwards
    assert "HF_DATASETS_OFFLINE" not in os.environ
    assert any((tmp_path / "cache").iterdir())  # datasets cached the files where it was told


def test_limit_and_parquet(model, bench, tmp_path):
    """--limit takes the first items; a parquet file is read like the JSON lines."""
    import pandas as pd

    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    pd.DataFrame(records("piqa", N)).to_parquet(pq_dir / "piqa_validation.parquet")
    lm = PerilnLM(model=model, tokenizer=ByteTokenizer(), device="cpu")
    from_pq = evaluate(lm, "piqa", data_dir=pq_dir, cache_dir=tmp_path / "c1", limit=5)
    want = expected_scores(model, "piqa", records("piqa", N)[:5])
    assert from_pq["metrics"]["eval/piqa/acc"] == pytest.approx(want["acc"])
    assert from_pq["meta"]["tasks"]["piqa"]["samples"] == 5
    assert from_pq["meta"]["limit"] == 5


def test_bpb_of_a_uniform_model_is_log2_of_the_vocabulary(bench, tmp_path):
    """Zero logits: every byte token has probability 1/257, so every byte costs log2(257) bits."""
    torch.manual_seed(0)
    uniform = build_model(ModelConfig(vocab_size=257, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                      max_seq_len=256, tie_embeddings=False)).eval()
    with torch.no_grad():
        uniform.lm_head.weight.zero_()
    lm = PerilnLM(model=uniform, tokenizer=ByteTokenizer(), device="cpu")
    metrics = evaluate(lm, "piqa,winogrande", data_dir=bench, cache_dir=tmp_path / "c", limit=4)["metrics"]
    for task in ("piqa", "winogrande"):
        assert metrics[f"eval/{task}/bpb"] == pytest.approx(np.log2(257), rel=1e-6)


def test_continuation_bpb_by_hand():
    """The correct request: the target index (PIQA-like), or doc["answer"] (Winogrande, whose
    requests share the continuation)."""
    from evals.run import continuation_bpb

    piqa = {"target": 1, "doc": {}, "arguments": [("Q:", " no"), ("Q:", " café")],
            "filtered_resps": [(-1.0, False), (-4.0, False)]}  # " café": 6 bytes
    wino = {"target": "ends.", "doc": {"answer": "2"}, "arguments": [("A x", " ends."), ("A y", " ends.")],
            "filtered_resps": [(-2.0, True), (-3.0, False)]}  # " ends.": 6 bytes
    ln2 = np.log(2)
    assert continuation_bpb([piqa]) == pytest.approx(4 / (6 * ln2))
    assert continuation_bpb([piqa, wino]) == pytest.approx((4 / (6 * ln2) + 3 / (6 * ln2)) / 2)
    assert continuation_bpb([]) is None


# ------------------------------------------------------------------------------- bad input

def test_missing_data_dir_and_files(bench, tmp_path):
    with pytest.raises(ConfigError, match=r"data directory .*nope not found; give --data-dir a folder with "
                                          r"arc_easy_test\.jsonl\.gz"):
        task_data.locate(tmp_path / "nope", PAPER_TASKS)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "piqa_validation.jsonl.gz").write_bytes((bench / "piqa_validation.jsonl.gz").read_bytes())
    with pytest.raises(ConfigError) as err:
        task_data.locate(partial, ("arc_easy", "piqa", "winogrande"))
    lines = str(err.value).splitlines()
    assert len(lines) == 2  # one line per missing file
    assert "task arc_easy:" in lines[0] and "arc_easy_test.jsonl.gz not found" in lines[0]
    assert "task winogrande:" in lines[1] and "winogrande_xl_validation.jsonl.gz" in lines[1]


def test_schema_mismatch_and_unreadable_file(bench, tmp_path):
    d = tmp_path / "wrong"
    d.mkdir()
    # ARC records where PIQA's are expected
    (d / "piqa_validation.jsonl.gz").write_bytes((bench / "arc_easy_test.jsonl.gz").read_bytes())
    with pytest.raises(ConfigError, match=r"task piqa: .*piqa_validation\.jsonl\.gz does not have the "
                                          r"baber/piqa schema: lacks goal, sol1, sol2, label \(has id, "
                                          r"question, choices, answerKey\)"):
        task_data.locate(d, ("piqa",))
    (d / "piqa_validation.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError,
                       match=r"task piqa: cannot read .*piqa_validation\.jsonl\.gz \(BadGzipFile"):
        task_data.locate(d, ("piqa",))
    with gzip.open(d / "piqa_validation.jsonl.gz", "wt") as f:
        f.write("")
    with pytest.raises(ConfigError, match="has no records"):
        task_data.locate(d, ("piqa",))
    bad_arc = {"question": "q", "choices": ["a", "b"], "answerKey": "A"}
    with gzip.open(d / "arc_easy_test.jsonl.gz", "wt") as f:
        f.write(json.dumps(bad_arc) + "\n")
    with pytest.raises(ConfigError, match=r"lacks choices\.text/choices\.label"):
        task_data.locate(d, ("arc_easy",))


def test_hub_out_of_reach_is_one_line(model):
    """Without --data-dir lm-eval loads from the hub; offline that is one line with the way out."""
    lm = PerilnLM(model=model, tokenizer=ByteTokenizer(), device="cpu")
    with task_data.offline(), pytest.raises(ConfigError) as err:
        evaluate(lm, "piqa", limit=2)
    assert len(str(err.value).splitlines()) == 1
    assert str(err.value).startswith("task data: ") and "baber/piqa" in str(err.value)
    assert str(err.value).endswith("offline, give --data-dir DIR with the task files "
                                   "(`periln data fetch-benchmarks DIR` where the hub is reachable)")


def _cli(capsys, *argv) -> tuple[int, str]:
    code = periln(list(map(str, argv)))
    return code, capsys.readouterr().err


def test_cli_bad_input_is_one_line(bench, tmp_path, capsys):
    ckpt = tmp_path / "junk.ckpt"
    ckpt.write_bytes(b"\x00not a checkpoint")
    code, err = _cli(capsys, "eval", ckpt, "--tasks", "piqa,hellaswg", "--data-dir", bench)
    assert code == 2 and err.strip() == ("periln: error: unknown task 'hellaswg'; did you mean 'hellaswag'? "
                                         "known: paper, all, arc_easy, arc_challenge, hellaswag, piqa, "
                                         "social_iqa, winogrande")
    code, err = _cli(capsys, "eval", ckpt, "--tasks", "piqa", "--data-dir", tmp_path / "absent")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "absent not found" in err
    code, err = _cli(capsys, "eval", ckpt, "--tasks", "piqa", "--data-dir", bench)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"periln: error: checkpoint {ckpt}: not a checkpoint of tensors and plain "
                          "data (")
    code, err = _cli(capsys, "eval", "pre_ln-tiny-lr0.001-s0", "--out-dir", tmp_path, "--data-dir", bench)
    assert code == 2 and "run 'pre_ln-tiny-lr0.001-s0': no checkpoint at" in err
    code, err = _cli(capsys, "eval", tmp_path / "missing.ckpt")
    assert code == 2 and "missing.ckpt not found" in err
    code, err = _cli(capsys, "eval", tmp_path, "--tasks", "piqa")  # a folder that is not a run
    assert code == 2 and "has no checkpoints/last.ckpt" in err


# ----------------------------------------------------------------------------------- fetching

def test_fetch_benchmarks_writes_the_expected_files(tmp_path, capsys):
    """The hub is unreachable here: a stand-in loader returns the rows a dataset would."""
    asked = []

    def load(path, name, split):
        asked.append((path, name, split))
        task = next(t for t, s in TASKS.items() if s.hub == path + (f":{name}" if name else ""))
        if split != TASKS[task].split:
            raise ValueError(f"no {split}")
        return records(task, 3)

    out = tmp_path / "bench"
    paths = task_data.fetch_benchmarks(out, ALL_TASKS, load=load, log=lambda _: None)
    assert sorted(p.name for p in paths) == sorted(task_data.expected_files(ALL_TASKS))
    assert ("allenai/ai2_arc", "ARC-Easy", "test") in asked
    assert ("lighteval/siqa", None, "validation") in asked
    with gzip.open(out / "winogrande_xl_validation.jsonl.gz", "rt") as f:
        assert [json.loads(line) for line in f] == records("winogrande", 3)
    assert task_data.locate(out, ALL_TASKS)  # what was fetched is what eval reads
    # few-shot splits the dataset lacks are skipped; a missing scored split is an error
    task_data.fetch_benchmarks(out, ("piqa",), fewshot_splits=True, load=load, log=lambda _: None)
    assert ("baber/piqa", None, "train") in asked

    def offline(path, name, split):
        raise ConnectionError("cannot reach huggingface.co\nmore")

    with pytest.raises(ConfigError, match=r"^fetch piqa: cannot load baber/piqa split 'validation' from the "
                                          r"hub \(ConnectionError: cannot reach huggingface.co\); run this "
                                          r"where the hub is reachable and copy the folder$"):
        task_data.fetch_benchmarks(out, ("piqa",), load=offline)


def test_synthetic_benchmarks_cli(tmp_path, capsys):
    assert periln(["data", "synthetic-benchmarks", str(tmp_path), "-n", "5", "--tasks", "paper"]) == 0
    # the task files plus the marker that labels scores on them synthetic (suite/synthetic_tasks.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*task_data.expected_files(PAPER_TASKS),
                                                                 "SYNTHETIC_BENCHMARKS.json"])
    files = task_data.locate(tmp_path, PAPER_TASKS)
    assert yaml.safe_dump(task_data.group_config(files))  # serialisable as lm-eval reads it
    assert Path(files["hellaswag"]["validation"]).stat().st_size > 0

"""Submitting sweeps (suite/launch.py): profiles, the signal -> checkpoint -> resume path, the debug
and local executors against a real MLflow sqlite store, a failing cell, and the paper grid's job
array in --dry-run."""

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import yaml

from models import ConfigError
from suite import launch, tracking
from suite.cli import main
from suite.config import load_run_config
from suite.launch import alive_here, fold_intents, load_profile, plan, queued_keys, resources, submit
from suite.sweep import load_sweep
from suite.train import Interrupted, SaveOnSignal, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_sweep(tmp_path, grid, name="t", steps=20, overrides=None):
    """A tiny CPU sweep file with every output under tmp_path."""
    data = {"name": name,
            "base": {"size": "tiny", "out_dir": str(tmp_path / "runs"),
                     "data": {"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 3000},
                     "train": {"seq_len": 64, "batch_size": 8, "max_steps": steps, "val_every": 10,
                               "val_batches": 1, "log_every": 5, "ckpt_every": 100, "progress_bar": False}},
            "grid": grid}
    if overrides:
        data["overrides"] = overrides
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path



def status_rows(out):
    """`periln status` output -> {key: state}."""
    return {line.split()[0]: line.split()[1] for line in out.strip().splitlines()[1:-1]}


def records(sweep):
    store = tracking.Store(tracking.store_uri(sweep.out_dir))
    return store, store.runs(store.experiment_id(sweep.name, create=False))


# ------------------------------------------------------------------------------------ profiles

def test_shipped_profiles_load():
    example = load_profile("slurm/profiles/example.yaml")
    assert example["gpus_per_node"] == example["tasks_per_node"] == 8
    assert example["slurm_partition"] == "gpu" and example["slurm_signal_delay_s"] == 300
    assert load_profile("slurm/profiles/local.yaml")["slurm_partition"] == "debug"


def test_profile_errors_name_file_key_and_fix(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("partiton: gpu\ntime: 60\ncpus_per_task: many\nsetup: module load x\nmem_gb: 1e2\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(info.value).splitlines() == [
        f"{path}: partiton: unknown submitit parameter; did you mean 'partition'?",
        f"{path}: time: use submitit's generic name 'timeout_min'",
        f"{path}: cpus_per_task: expected int; got 'many'",
        f"{path}: setup: expected a list of shell lines; got 'module load x'",
    ]  # mem_gb: 1e2 (a YAML 1.1 string) is the number 100


def test_one_task_per_device(tmp_path):
    cell = load_run_config(None, ["train.devices=4", "train.num_nodes=2", "train.accelerator=gpu"])
    params = resources(cell, {"gpus_per_node": 4, "slurm_partition": "gpu"}, "p.yaml")
    assert (params["tasks_per_node"], params["gpus_per_node"], params["nodes"]) == (4, 4, 2)
    with pytest.raises(ConfigError, match=r"p.yaml: gpus_per_node: 8, but the sweep's train.devices is 4; "
                                          "one task per device: make them equal"):
        resources(cell, {"gpus_per_node": 8}, "p.yaml")


# ------------------------------------------------------------------- signal -> save -> resume

class SendSignal(L.Callback):
    def __init__(self, at, sig):
        self.at, self.sig = at, sig

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.at:
            os.kill(os.getpid(), self.sig)


class Losses(L.Callback):
    def __init__(self):
        self.by_step = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.by_step[trainer.global_step] = float(outputs["loss"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_signal_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, run_overrides, sig):
    # periodic checkpoints at steps 4 and 8, a validation right after the step the signal stops at:
    # ModelCheckpoint(save_last="link") points last.ckpt back at step8.ckpt at that validation's end
    common = run_overrides + ["train.max_steps=24", "train.ckpt_every=4", "train.val_every=10",
                              "train.val_batches=1", "train.log_every=4", "lr=3e-3"]
    straight = Losses()
    train(load_run_config(None, common + [f"out_dir={tmp_path / 'a'}"]), [straight])

    cfg = load_run_config(None, common + [f"out_dir={tmp_path / 'b'}"])
    saved = cfg.run_dir / "checkpoints" / "interrupted.ckpt"
    handed_over = []  # stands in for submitit's USR2 handler (checkpoint(), requeue, exit)
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: handed_over.append(signum))
    try:
        saver = SaveOnSignal(saved)
        saver.install()
        with pytest.raises(SystemExit) as info:
            train(cfg, [saver, SendSignal(9, sig)])
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert isinstance(info.value, Interrupted) and info.value.code  # a non-zero exit
    assert saver.saved_step == 10 and saved.is_file()  # the step the signal arrived in, completed
    recorded = json.loads((cfg.run_dir / "result.json").read_text())
    assert (recorded["status"], recorded["step"]) == ("interrupted", 10)
    assert handed_over == ([signal.SIGUSR2] if sig == signal.SIGUSR2 else [])
    resumed = Losses()
    result = train(cfg, [resumed])
    assert min(resumed.by_step) == 11 and result["step"] == 24  # from step 10, not step8.ckpt
    assert result["resumed_from"] == str(saved) and not saved.exists()  # done with it
    assert all(resumed.by_step[s] == straight.by_step[s] for s in resumed.by_step)  # bit-identical


# -------------------------------------------------------------------------------- executors

def test_debug_executor_records_each_cell_once_and_resubmission_skips(tmp_path, capsys):
    path = tiny_sweep(tmp_path, {"placement": ["pre_ln", "peri_ln"], "seed": [0]})
    sweep = load_sweep(path)
    sub = submit(sweep, "debug")
    assert sorted(sub.results) == ["peri_ln-tiny-lr0.001-s0", "pre_ln-tiny-lr0.001-s0"] and not sub.errors
    store, recs = records(sweep)
    assert sorted(recs) == sorted(sub.results)
    for key, rec in recs.items():
        assert (rec.status, rec.step, rec.tags["executor"]) == ("finished", 20, "debug")
        assert rec.params["train.max_steps"] == "20" and rec.params["placement"] == key.split("-")[0]
        assert rec.tags["checkpoint"] == str(tmp_path / "runs" / "t" / key / "checkpoints" / "last.ckpt")
        assert rec.metrics["train/loss"] == pytest.approx(sub.results[key]["train_loss"])
        assert [s for s, _ in store.metric_history(rec.run_id, "train/loss")] == [4, 9, 14, 19]
        assert store.client.get_run(rec.run_id).info.status == "FINISHED"
        assert [a.path for a in store.client.list_artifacts(rec.run_id)] == ["config.yaml"]

    again = submit(sweep, "debug")
    assert again.plan.submit == [] and again.plan.skip == {k: "finished" for k in recs}
    assert records(sweep)[1].keys() == recs.keys()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert status_rows(out) == {k: "finished" for k in recs} and "2 cells: 2 finished" in out

    # a key keeps its settings: resubmitting it changed is an error, not a second run, and not a
    # silent skip of the finished cells either; where the runs live may change
    with pytest.raises(ConfigError, match=r"and 1 other cells recorded with other settings "
                       r"\(train.max_steps: recorded '20', now '30'\)"):
        submit(load_sweep(path, ["train.max_steps=30"]), "debug")
    moved = submit(load_sweep(path, ["data.num_workers=0"]), "debug")
    assert moved.plan.skip == {k: "finished" for k in recs}
    with pytest.raises(ConfigError, match=r"train.max_steps: recorded '20', now '30'"):
        _resubmit_changed(path)


def _resubmit_changed(path):
    sweep = load_sweep(path, ["train.max_steps=30"])
    _, recs = records(sweep)
    for rec in recs.values():  # make them unfinished, so the changed cell would run
        tracking.Store(tracking.store_uri(sweep.out_dir)).set_status(rec.run_id, "failed")
    submit(sweep, "debug")


@pytest.mark.slow
def test_local_executor_a_failing_cell_is_recorded_and_the_others_finish(tmp_path, capsys):
    path = tiny_sweep(tmp_path, {"seed": [0, 1, 2]}, overrides=[
        {"when": {"seed": 2}, "set": {"data.source": "/nonexistent/corpus.jsonl"}}])
    sweep = load_sweep(path)
    lines = []
    sub = submit(sweep, "local", parallel=2, progress=lines.append)
    assert sorted(sub.results) == ["pre_ln-tiny-lr0.001-s0", "pre_ln-tiny-lr0.001-s1"]
    # while it waits: cells done / running / left, first and last from the records
    counts = [line for line in lines if line.startswith("cells: ")]
    assert counts[0] == "cells: 0 done, 0 running, 3 left"
    assert counts[-1] == "cells: 3 done, 0 running, 0 left"
    assert list(sub.errors) == ["pre_ln-tiny-lr0.001-s2"]
    store, recs = records(sweep)
    assert {k: r.status for k, r in recs.items()} == {
        "pre_ln-tiny-lr0.001-s0": "finished", "pre_ln-tiny-lr0.001-s1": "finished",
        "pre_ln-tiny-lr0.001-s2": "failed"}
    bad = recs["pre_ln-tiny-lr0.001-s2"]
    assert bad.tags["error"].startswith("ConfigError: data source '/nonexistent/corpus.jsonl'")
    assert store.client.get_run(bad.run_id).info.status == "FAILED"
    assert "error.txt" in [a.path for a in store.client.list_artifacts(bad.run_id)]
    assert recs["pre_ln-tiny-lr0.001-s0"].tags["job_id"] != recs["pre_ln-tiny-lr0.001-s1"].tags["job_id"]

    assert main(["status", str(path)]) == 1  # a failed cell: non-zero
    out = capsys.readouterr().out
    assert status_rows(out)["pre_ln-tiny-lr0.001-s2"] == "failed" and "ConfigError: data source" in out

    again = submit(sweep, "local", parallel=2)  # only the failed cell runs again, same MLflow run
    assert [c.key for c in again.plan.submit] == ["pre_ln-tiny-lr0.001-s2"]
    assert again.plan.resume == {"pre_ln-tiny-lr0.001-s2"}
    _, after = records(sweep)
    assert {k: r.run_id for k, r in after.items()} == {k: r.run_id for k, r in recs.items()}


def test_multi_process_cells_need_slurm(tmp_path):
    path = tiny_sweep(tmp_path, {"seed": [0]})
    sweep = load_sweep(path, ["train.devices=2"])
    with pytest.raises(ConfigError, match="train.devices x train.num_nodes = 2 processes need --executor"):
        submit(sweep, "local")


def test_an_unknown_executor_is_named_with_the_closest_one(tmp_path):
    sweep = load_sweep(tiny_sweep(tmp_path, {"seed": [0]}))
    with pytest.raises(ConfigError, match=r"^--executor 'locl': unknown; did you mean 'local'\? use one of "
                                          r"local, debug, slurm$"):
        submit(sweep, "locl")
    assert not (tmp_path / "runs").exists()  # nothing recorded


def test_a_local_job_is_alive_while_its_process_runs():
    host = socket.gethostname()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert alive_here(host, proc.pid) and alive_here(host, str(proc.pid))
        assert not alive_here("another-host", proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not alive_here(host, proc.pid)  # ended
    assert not alive_here(host, os.getpid())  # this process: left from an earlier attempt of it
    assert not any(alive_here(host, pid) for pid in ("", None, "0", "123_4", "dry-run"))


def test_paper_grid_dry_run_is_one_job_array(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may appear here: no store, no runs
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = load_sweep(os.path.join(os.path.dirname(__file__), "..", "sweeps", "paper.yaml"))
    start = time.perf_counter()
    sub = submit(sweep, "slurm", os.path.join(os.path.dirname(__file__), "..", "slurm", "profiles",
                                              "example.yaml"), dry_run=True)
    seconds = time.perf_counter() - start
    assert len(sub.plan.submit) == 225 and set(sub.job_ids.values()) == {"dry-run"}
    script = sub.script
    for line in ["#SBATCH --array=0-224%16", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --nodes=1", "#SBATCH --partition=gpu", "#SBATCH --account=my-project",
                 "#SBATCH --signal=USR2@300", "#SBATCH --time=2880", "#SBATCH --job-name=periln-paper",
                 "#SBATCH --cpus-per-task=12", "source $HOME/periln-suite/.venv/bin/activate"]:
        assert line in script, line
    assert len(list(sub.folder.rglob("*_submitted.pkl"))) == 225  # one pickled TrainJob per cell
    assert list(tmp_path.iterdir()) == []
    print(f"paper grid dry-run submit: {seconds:.2f} s for 225 cells")


def test_eval_switch_scores_each_finished_run_into_its_record(tmp_path, monkeypatch):
    from suite.synthetic_tasks import write_synthetic_benchmarks

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    write_synthetic_benchmarks(tmp_path / "tasks", n=8, tasks=("arc_easy", "piqa"))
    path = tiny_sweep(tmp_path, {"seed": [0]}, steps=10)
    data = yaml.safe_load(path.read_text())
    data["eval"] = {"tasks": ["arc_easy", "piqa"], "limit": 8, "data_dir": str(tmp_path / "tasks")}
    path.write_text(yaml.safe_dump(data))
    sub = submit(load_sweep(path), "debug")
    assert not sub.errors
    store, recs = records(load_sweep(path))
    rec = recs["pre_ln-tiny-lr0.001-s0"]
    assert rec.status == "finished"
    for key in ("eval/arc_easy/acc", "eval/arc_easy/acc_norm", "eval/piqa/acc"):
        assert 0.0 <= rec.metrics[key] <= 1.0, key
        assert store.metric_history(rec.run_id, key)[0][0] == 10  # at the run's final step
    assert "eval.json" in [a.path for a in store.client.list_artifacts(rec.run_id)]
    # one eval.json format: the run directory's file is the MLflow artifact, byte for byte, and has
    # the keys `periln eval` writes for the same run
    cell = load_sweep(path).cells[0]
    in_run_dir = (cell.run_dir / "eval.json").read_text()
    (tmp_path / "dl").mkdir()
    artifact = Path(store.client.download_artifacts(rec.run_id, "eval.json", str(tmp_path / "dl")))
    artifact = artifact.read_text()
    assert artifact == in_run_dir
    swept = json.loads(in_run_dir)
    assert set(swept) == {"metrics", "meta"} and swept["meta"]["prefix_eot"] is True
    assert swept["metrics"] == {k: v for k, v in rec.metrics.items() if k.startswith("eval/")}
    assert main(["eval", str(cell.run_dir), "--tasks", "arc_easy,piqa", "--limit", "8", "--data-dir",
                   str(tmp_path / "tasks"), "--output", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert set(again) == set(swept) and set(again["meta"]) == set(swept["meta"])
    assert again["metrics"] == swept["metrics"]  # the same checkpoint, items and settings


# ------------------------------------------------------------------- a key is queued once
# (the real SLURM side, a killed submitter and two submits at once: tests/test_slurm.py)

def record(key, status, **tags):
    return tracking.RunRecord(run_id=f"run-{key}", key=key, status=status, tags=tags)


def test_squeue_rows_map_back_to_keys_by_intent_file_or_record(tmp_path):
    ledger = tmp_path / ".submitit"
    ledger.mkdir()
    (ledger / "pending-S1.json").write_text(json.dumps({"keys": ["a", "b", "c"], "run_ids": {}}))
    intents = launch.read_intents(ledger)
    mine = hashlib.sha1(str(ledger).encode()).hexdigest()[:12]  # the folder's tag in --comment
    rows = [("41_0", "PENDING", f"periln:{mine}:S1"), ("41_2", "RUNNING", f"periln:{mine}:S1 user text"),
            ("7", "RUNNING", "(null)"),                 # an older submission: its id is in a record
            ("55_0", "PENDING", "periln:0123456789ab:S1"),  # the same sweep name in another out_dir
            ("99", "PENDING", "(null)"),                # nobody knows what it trains
            ("41_5", "PENDING", f"periln:{mine}:S1")]   # beyond the intent's keys
    queued = queued_keys(rows, ledger, intents, {"d": record("d", "queued", job_id="7")})
    assert queued.keys == {"a": "41_0 PENDING", "c": "41_2 RUNNING", "d": "7 RUNNING"}
    assert queued.found == {"S1": {"a": "41_0", "c": "41_2"}}
    assert queued.unmapped == ["99", "41_5"]

    (ledger / "pending-S2.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"pending-S2.json: unreadable submission record; if no job of "
                                          r"this sweep is in the queue \(squeue\), delete it"):
        launch.read_intents(ledger)


def test_folding_records_the_job_ids_a_killed_submitter_left(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.prepare_store(uri)
    store = tracking.Store(uri)
    exp = store.experiment_id("t")
    ids = {k: store.create_run(exp, k, {}, {"executor": "slurm"}) for k in ("a", "b", "c")}
    ledger = tmp_path / ".submitit"
    ledger.mkdir()
    written = {"keys": ["a", "b"], "run_ids": {"a": ids["a"], "b": ids["b"]},
               "job_ids": {"a": "8_0", "b": "8_1"}}
    (ledger / "pending-S1.json").write_text(json.dumps(written))  # ids written, MLflow not reached
    (ledger / "pending-S2.json").write_text(json.dumps({"keys": ["c"], "run_ids": {"c": ids["c"]}}))
    (ledger / "pending-S3.json").write_text(json.dumps({"keys": ["x"], "run_ids": {}}))  # never queued
    recorded = fold_intents(launch.read_intents(ledger), {"S2": {"c": "9"}}, store)  # 9: squeue's
    assert recorded == 3
    recs = store.runs(exp)
    assert {k: r.tags.get("job_id") for k, r in recs.items()} == {"a": "8_0", "b": "8_1", "c": "9"}
    assert list(ledger.iterdir()) == []


def test_a_key_with_a_live_job_or_submitter_is_not_planned_again(tmp_path):
    cells = load_sweep(tiny_sweep(tmp_path, {"seed": [0, 1, 2, 3]})).cells
    k0, k1, k2, k3 = (c.key for c in cells)
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        recs = {k0: record(k0, "queued", executor="local", host=host, job_id=str(live.pid)),  # a submitter
                k1: record(k1, "queued", executor="local", host=host, job_id=str(dead.pid)),  # one that died
                k2: record(k2, "interrupted", executor="slurm", job_id="3_2"),
                k3: record(k3, "finished", executor="slurm", job_id="3_3")}
        out = plan(cells, recs, "local", queued={k2: "3_2 PENDING", k3: "3_3 COMPLETING"})
    finally:
        live.kill()
        live.wait()
    assert [c.key for c in out.submit] == [k1] and out.resume == {k1}
    assert out.skip == {k0: f"queued (pid {live.pid})", k2: "interrupted (SLURM job 3_2 PENDING)",
                        k3: "finished"}


def test_the_submit_lock_is_held_to_record_the_cells_not_while_they_run(tmp_path, monkeypatch):
    # one cell that fails at once (no data): the debug executor runs it in this process
    path = tiny_sweep(tmp_path, {"seed": [0]}, overrides=[
        {"when": {"seed": 0}, "set": {"data.source": "/nonexistent/corpus.jsonl"}}])
    sweep = load_sweep(path)
    ledger = tmp_path / "runs" / "t" / ".submitit"
    ledger.mkdir(parents=True)
    ledger.chmod(0o755)  # as an earlier periln left it
    seen = {}

    def while_cells_run(sub, jobs, say):
        with open(ledger / "submit.lock") as fh:  # another open file: flock says whether it is held
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["lock"] = "free"
            except BlockingIOError:
                seen["lock"] = "held"
        seen["records"] = {k: (r.status, r.tags.get("job_id")) for k, r in records(sweep)[1].items()}
        return real(sub, jobs, say)

    real = launch._run_debug
    monkeypatch.setattr(launch, "_run_debug", while_cells_run)
    sub = submit(sweep, "debug")
    assert list(sub.errors) == [sweep.keys[0]]
    assert seen == {"lock": "free", "records": {sweep.keys[0]: ("queued", str(os.getpid()))}}
    assert sub.folder.parent == ledger
    assert {oct(d.stat().st_mode & 0o777) for d in (ledger, sub.folder)} == {"0o700"}

"""Submitting sweeps (suite/launch.py): profiles, the signal -> checkpoint -> resume path, the debug
and local executors against a real MLflow sqlite store, a failing cell, and the paper grid's job
array in --dry-run."""

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
from suite import tracking
from suite.cli import main
from suite.config import load_run_config
from suite.launch import alive_here, load_profile, resources, submit
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
    common = run_overrides + ["train.max_steps=24", "train.ckpt_every=1000", "train.log_every=4", "lr=3e-3"]
    straight = Losses()
    train(load_run_config(None, common + [f"out_dir={tmp_path / 'a'}"]), [straight])

    cfg = load_run_config(None, common + [f"out_dir={tmp_path / 'b'}"])
    last = cfg.run_dir / "checkpoints" / "last.ckpt"
    handed_over = []  # stands in for submitit's USR2 handler (checkpoint(), requeue, exit)
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: handed_over.append(signum))
    try:
        saver = SaveOnSignal(last)
        saver.install()
        with pytest.raises(SystemExit) as info:
            train(cfg, [saver, SendSignal(9, sig)])
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert isinstance(info.value, Interrupted) and info.value.code  # a non-zero exit
    assert saver.saved_step == 10 and last.is_file()  # the step the signal arrived in, completed
    recorded = json.loads((cfg.run_dir / "result.json").read_text())
    assert (recorded["status"], recorded["step"]) == ("interrupted", 10)
    assert handed_over == ([signal.SIGUSR2] if sig == signal.SIGUSR2 else [])
    resumed = Losses()
    result = train(cfg, [resumed])
    assert min(resumed.by_step) == 11 and result["step"] == 24  # no periodic checkpoint existed
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

"""Against a real single-node SLURM cluster (slurm/start-cluster.sh, started by this module's
session fixture): a sweep as one job array, resubmission, requeue with exact resume, a 2-process
DDP run, and 8 jobs writing to one MLflow store. Each test uses its own submitit folder and store."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from suite import tracking
from suite.cli import main
from suite.launch import job_states, submit, wait
from suite.sweep import load_sweep

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "slurm" / "profiles" / "local.yaml"
TIMEOUT_S = 900


@pytest.fixture(scope="session")
def slurm_cluster():
    """The cluster of slurm/start-cluster.sh, its client environment exported to this process (and
    so to the jobs). Stopped at the end only if this session started it."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests need root: slurm/start-cluster.sh runs the daemons as SlurmUser=root")
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        pytest.skip("SLURM tests need apt-get (to install slurmctld, slurmd, munge) or SLURM installed")
    start = subprocess.run([str(ROOT / "slurm" / "start-cluster.sh")], capture_output=True, text=True,
                           timeout=900)
    if start.returncode != 0:
        pytest.fail(f"slurm/start-cluster.sh failed:\n{start.stderr[-3000:]}")
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    for line in start.stdout.splitlines():  # export SLURM_CONF=...; export PATH=<shim dir>:$PATH
        name, _, value = line.removeprefix("export ").partition("=")
        os.environ[name] = value.replace("$PATH", saved["PATH"] or "")
    assert shutil.which("sacct").startswith(os.path.dirname(os.environ["SLURM_CONF"]))  # the shim
    yield
    if "already up" not in start.stderr:
        subprocess.run([str(ROOT / "slurm" / "stop-cluster.sh")], capture_output=True, timeout=300)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def tiny_sweep(tmp_path, grid, name="t", steps=20, **train):
    data = {"name": name,
            "base": {"size": "tiny", "out_dir": str(tmp_path / "runs"),
                     "data": {"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 2000},
                     "train": {"seq_len": 64, "batch_size": 8, "max_steps": steps, "val_every": 10,
                               "val_batches": 1, "log_every": 5, "ckpt_every": 1000, "progress_bar": False,
                               **train}},
            "grid": grid}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_sweep(path), path


def records(sweep):
    store = tracking.Store(tracking.store_uri(sweep.out_dir))
    return store, store.runs(store.experiment_id(sweep.name, create=False))


def scontrol(*args):
    subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True)


def test_four_cells_are_one_job_array_and_a_resubmission_runs_nothing(slurm_cluster, tmp_path, capsys):
    sweep, path = tiny_sweep(tmp_path, {"placement": ["pre_ln", "peri_ln"], "seed": [0, 1]})
    sub = submit(sweep, "slurm", PROFILE, folder=tmp_path / "submitit")
    arrays = {j.split("_")[0] for j in sub.job_ids.values()}
    assert len(arrays) == 1 and sorted(j.split("_")[1] for j in sub.job_ids.values()) == ["0", "1", "2", "3"]
    assert set(wait(sub, timeout_s=TIMEOUT_S).values()) == {"COMPLETED"}

    store, recs = records(sweep)
    assert sorted(recs) == sorted(sweep.keys)
    for key, rec in recs.items():
        assert (rec.status, rec.step, rec.tags["executor"]) == ("finished", 20, "slurm")
        assert rec.tags["job_id"] == sub.job_ids[key]
        assert store.client.get_run(rec.run_id).info.status == "FINISHED"
    assert main(["status", str(path)]) == 0
    assert "4 cells: 4 finished" in capsys.readouterr().out

    again = submit(sweep, "slurm", PROFILE, folder=tmp_path / "submitit-2")
    assert again.plan.submit == [] and again.job_ids == {}
    assert again.plan.skip == {k: "finished" for k in sweep.keys}
    _, after = records(sweep)
    assert {k: (r.run_id, r.step) for k, r in after.items()} == {
        k: (r.run_id, r.step) for k, r in recs.items()}


def test_requeued_and_preempted_jobs_resume_from_their_checkpoint_to_the_same_final_loss(
        slurm_cluster, tmp_path):
    # Three identical runs (the variant only names them). One is requeued by SLURM (SIGTERM, then
    # requeue), one gets submitit's preemption/timeout signal (USR2: checkpoint(), submitit
    # requeues it). Every step is logged, so a resume from anywhere but the step the signal stopped
    # at would log steps twice.
    steps = 300
    sweep, _ = tiny_sweep(tmp_path, {"variant": ["straight", "requeued", "preempted"]}, steps=steps,
                          log_every=1, ckpt_every=25)
    straight, requeued, preempted = sweep.keys
    sub = submit(sweep, "slurm", PROFILE, folder=tmp_path / "submitit")
    deadline = time.monotonic() + TIMEOUT_S

    def interrupt(key, *command):
        ckpts = tmp_path / "runs" / "t" / key / "checkpoints"
        while not list(ckpts.glob("step*.ckpt")):  # the first periodic checkpoint: under way
            assert time.monotonic() < deadline, f"{key} never reached step 25"
            time.sleep(0.2)
        job = sub.job_ids[key]
        subprocess.run([*command, job], check=True, capture_output=True)
        while job_states([job]).get(job) != "PENDING":
            assert time.monotonic() < deadline, f"{key} was not requeued"
            time.sleep(0.5)
        scontrol("update", f"JobId={job}", "StartTime=now")

    interrupt(requeued, "scontrol", "requeue")
    interrupt(preempted, "scancel", "--signal=USR2")
    assert set(wait(sub, timeout_s=TIMEOUT_S).values()) == {"COMPLETED"}

    store, recs = records(sweep)
    ref = recs[straight]
    ref_hist = store.metric_history(ref.run_id, "train/loss")
    assert (ref.status, ref.step, ref.tags["resumed"]) == ("finished", steps, "False")
    assert [s for s, _ in ref_hist] == list(range(steps))
    for key in (requeued, preempted):
        rec = recs[key]
        assert (rec.status, rec.step, rec.tags["restarts"], rec.tags["resumed"]) == (
            "finished", steps, "1", "True"), key
        assert 25 <= int(rec.tags["interrupted_at"]) < steps, key  # stopped mid-run, at a step boundary
        hist = store.metric_history(rec.run_id, "train/loss")
        assert [s for s, _ in hist] == list(range(steps)), key  # each step logged once
        assert hist[-1][1] == ref_hist[-1][1], key  # the same final loss, bit for bit (one thread each)
        assert dict(hist) == dict(ref_hist), key


def test_two_process_ddp_run_finishes(slurm_cluster, tmp_path):
    sweep, _ = tiny_sweep(tmp_path, {"seed": [0]}, devices=2, strategy="ddp", accelerator="cpu")
    sub = submit(sweep, "slurm", PROFILE, folder=tmp_path / "submitit")
    assert set(wait(sub, timeout_s=TIMEOUT_S).values()) == {"COMPLETED"}
    rec = records(sweep)[1][sweep.keys[0]]
    assert (rec.status, rec.step, rec.params["train.devices"]) == ("finished", 20, "2")
    job = sub.job_ids[sweep.keys[0]]
    logs = {p.name: p.read_text() for p in (tmp_path / "submitit").rglob(f"{job.split('_')[0]}_*_log.*")}
    rank1 = [text for name, text in logs.items() if name.endswith("_1_log.err")]
    assert rank1 and "MEMBER: 2/2" in rank1[0]  # Lightning's second rank, launched by srun


def test_eight_jobs_logging_to_one_store_lose_no_metric(slurm_cluster, tmp_path):
    steps = 12
    sweep, _ = tiny_sweep(tmp_path, {"seed": list(range(8))}, steps=steps, log_every=1, val_every=100)
    sub = submit(sweep, "slurm", PROFILE, folder=tmp_path / "submitit")
    assert set(wait(sub, timeout_s=TIMEOUT_S).values()) == {"COMPLETED"}
    store, recs = records(sweep)
    assert len(recs) == 8 and {r.status for r in recs.values()} == {"finished"}
    for rec in recs.values():
        for metric in ("train/loss", "train/grad_norm", "lr-AdamW/pg1"):
            logged = sorted(s for s, _ in store.metric_history(rec.run_id, metric))
            assert logged == list(range(steps)), metric

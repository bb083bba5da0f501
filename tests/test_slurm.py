"""Against a real single-node SLURM cluster (slurm/start-cluster.sh, started by this module's
session fixture): a sweep as one job array, resubmission, requeue with exact resume, a 2-process
DDP run, 8 jobs writing to one MLflow store, and a key queued once: a submitter killed right after
sbatch, two submits at once, a sweep job no record names, private pickles. Each test uses its own
submitit folder and store."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from models import ConfigError
from suite import tracking
from suite.cli import main
from suite.launch import job_states, ledger_dir, submit, wait
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


# --------------------------------------------------------------------- a key is queued once

@pytest.fixture
def held_node(slurm_cluster):
    """A job on every CPU of the node, so that arrays queued meanwhile stay PENDING (nothing
    trains); yields a list the test adds its job names to; cancels them and the hold at the end."""
    cpus = subprocess.run(["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True,
                          check=True).stdout.split()[0]
    hold = subprocess.run(["sbatch", "--parsable", f"--cpus-per-task={cpus}", "--job-name=periln-test-hold",
                           "--wrap", "sleep 600"], capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.monotonic() + 120
    while job_states([hold]).get(hold) != "RUNNING":
        assert time.monotonic() < deadline, "the hold job never started"
        time.sleep(0.5)
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["scancel", "--name", name], capture_output=True)
    subprocess.run(["scancel", hold], capture_output=True)


def sweep_tasks(name):
    """{job id: state} of the sweep's jobs in the queue, one array task a row."""
    out = subprocess.run(["squeue", "--noheader", "--array", "--name", f"periln-{name}", "--format=%i|%T"],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.strip().split("|") for line in out.splitlines() if line.strip())


def periln_submit(path, **env):
    """`periln submit PATH --executor slurm` in its own process."""
    return subprocess.Popen([sys.executable, "-m", "suite.cli", "submit", str(path), "--executor", "slurm",
                             "--profile", str(PROFILE)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def pickled_key(ledger, job):
    """The run key that SLURM job `job` trains, from the pickle submitit wrote for it."""
    from submitit.core.utils import DelayedSubmission

    (path,) = ledger.rglob(f"{job}_submitted.pkl")
    return DelayedSubmission.load(path).function.run.key


@pytest.mark.parametrize("moment", ["sbatch", "job-ids"])
def test_a_submitter_killed_right_after_sbatch_leaves_no_key_to_queue_twice(held_node, tmp_path, moment):
    # killed the moment sbatch answered (the job ids are written nowhere), or once they are in the
    # intent file but not in MLflow: the resubmission queues nothing and records the first array
    sweep, path = tiny_sweep(tmp_path, {"seed": [0, 1, 2]}, name=f"kill-{moment}")
    held_node.append(f"periln-{sweep.name}")
    proc = periln_submit(path, PERILN_TEST_KILL_AT=moment)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    first = sweep_tasks(sweep.name)
    assert len(first) == 3 and set(first.values()) == {"PENDING"}
    _, recs = records(sweep)
    assert {r.status for r in recs.values()} == {"queued"}
    assert not any(r.tags.get("job_id") in first for r in recs.values())  # MLflow knows no job
    ledger = ledger_dir(sweep)
    (intent,) = ledger.glob("pending-*.json")
    assert ("job_ids" in json.loads(intent.read_text())) == (moment == "job-ids")

    again = submit(sweep, "slurm", PROFILE)
    assert again.plan.submit == [] and again.job_ids == {}
    assert sorted(again.plan.skip) == sorted(sweep.keys)
    assert all(why.startswith("queued (SLURM job ") and why.endswith(" PENDING)")
               for why in again.plan.skip.values())
    assert sweep_tasks(sweep.name) == first  # one job per key: the first array's
    _, recs = records(sweep)
    assert {key: r.tags["job_id"] for key, r in recs.items()} == {pickled_key(ledger, j): j for j in first}
    assert not list(ledger.glob("pending-*.json"))  # recorded: the intent file is gone
    assert submit(sweep, "slurm", PROFILE).plan.submit == []  # and stays so


def test_two_submits_of_one_sweep_at_once_queue_each_key_once(held_node, tmp_path):
    sweep, path = tiny_sweep(tmp_path, {"seed": [0, 1, 2]}, name="race")
    held_node.append(f"periln-{sweep.name}")
    # each holds still 8 s between reading the records and recording its cells (a slow store):
    # without the lock both would read no records and queue every key
    procs = [periln_submit(path, PERILN_TEST_PAUSE_AT="plan:8") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    summaries = sorted(next(ln for ln in out.splitlines() if " submitted, " in ln).split(" in ")[0]
                       for out, _ in outs)
    assert summaries == ["0 submitted, 0 already finished, 3 skipped",
                         "3 submitted, 0 already finished, 0 skipped"]
    tasks = sweep_tasks(sweep.name)
    assert len(tasks) == 3 and len({j.split("_")[0] for j in tasks}) == 1  # one array, each key once
    _, recs = records(sweep)
    assert sorted(r.tags["job_id"] for r in recs.values()) == sorted(tasks)


def test_an_active_job_of_the_sweep_that_no_record_names_is_refused(held_node, tmp_path, capsys):
    sweep, path = tiny_sweep(tmp_path, {"seed": [0, 1]}, name="stranger")
    held_node.append(f"periln-{sweep.name}")
    job = subprocess.run(["sbatch", "--parsable", f"--job-name=periln-{sweep.name}", "--wrap", "sleep 600"],
                         capture_output=True, text=True, check=True).stdout.strip()
    with pytest.raises(ConfigError, match=rf"SLURM job {job} named periln-stranger is queued or running but "
                       rf"no record says which cells it trains; .* wait until it ends, or cancel it "
                       rf"\(scancel {job}\)$"):
        submit(sweep, "slurm", PROFILE)
    assert main(["submit", str(path), "--executor", "slurm", "--profile", str(PROFILE)]) == 2
    err = capsys.readouterr().err  # MLflow's own INFO lines aside: one line
    assert [ln for ln in err.splitlines() if ln.startswith("periln:")] == [
        f"periln: error: {path}: SLURM job {job} named periln-stranger is queued or running but no record "
        "says which cells it trains; submitting now could train a cell twice: wait until it ends, or "
        f"cancel it (scancel {job})"] and "Traceback" not in err
    assert sweep_tasks(sweep.name) == {job: "PENDING"}  # nothing queued beside it
    assert records(sweep)[1] == {}  # nor recorded


def test_submitit_pickles_are_private_to_the_submitting_user(held_node):
    # out_dir under a folder every user can enter (pytest's tmp_path is private already), and a
    # readable control file in it: only the .submitit folder stands between others and the pickles
    public = Path(tempfile.mkdtemp(prefix="periln-perm-"))
    try:
        public.chmod(0o755)
        sweep, _ = tiny_sweep(public, {"seed": [0, 1]}, name="private")
        held_node.append(f"periln-{sweep.name}")
        submit(sweep, "slurm", PROFILE)
        ledger = ledger_dir(sweep)
        pickles = list(ledger.rglob("*_submitted.pkl"))
        assert len(pickles) == 2
        folders = {ledger, *(p.parent.parent for p in pickles)}  # .submitit and the submission folder
        assert {f.stat().st_mode & 0o777 for f in folders} == {0o700}
        control = public / "private.yaml"  # the sweep file
        control.chmod(0o644)

        def read_as_nobody(path):
            return subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(path)], capture_output=True)

        assert read_as_nobody(control).returncode == 0
        for pkl in pickles:
            denied = read_as_nobody(pkl)
            assert denied.returncode != 0 and b"Permission denied" in denied.stderr
    finally:
        subprocess.run(["scancel", "--name", "periln-private"], capture_output=True)
        shutil.rmtree(public, ignore_errors=True)

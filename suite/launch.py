"""Submitting a sweep through submitit: the only module that imports it.

Executors: `local` (this machine, subprocesses, N at a time; the embedded default), `debug` (in
this process, one after the other; tests) and `slurm` (one job array per sweep, its parallelism
from the profile). Every cell is a `TrainJob`, a submitit `Checkpointable`:

- resubmitting a sweep skips finished (and diverged) keys and resumes the others from
  <run_dir>/checkpoints/last.ckpt, under the MLflow run their key already has (suite.tracking);
- a key never trains twice at once: a lock per sweep serializes submits, an intent file around
  sbatch survives a submitter killed before MLflow has the job ids, and squeue is asked for the
  sweep's jobs by name before anything is queued ("one submission at a time" below);
- SIGTERM (preemption, `scancel`, `scontrol requeue`) and submitit's timeout signal (USR2, sent
  `signal_delay_s` before the time limit) both save last.ckpt at the next step boundary; on USR2
  submitit's own handler then runs `checkpoint()` and requeues the job. Lightning's own SLURM
  requeue is off (`SLURMEnvironment(auto_requeue=False)`) so the two do not both act.
- multi-GPU / multi-node: tasks per node = GPUs per node = the run's `train.devices`, nodes =
  `train.num_nodes`; Lightning's SLURM environment wires the ranks, strategy ddp (or
  `train.strategy: fsdp`).

Profiles (slurm/profiles/*.yaml) use submitit's parameter names: the generic ones (timeout_min,
mem_gb, cpus_per_task, gpus_per_node, tasks_per_node, nodes) and SLURM's (partition, account, qos,
constraint, setup, signal_delay_s, array_parallelism, additional_parameters, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import submitit
from lightning.pytorch.callbacks import Callback
from submitit.slurm.slurm import SlurmExecutor

from models import ConfigError
from suite.config import RunConfig, flatten, read_yaml
from suite.cost import resolve_budget
from suite.files import atomic_write_text, file_lock, suggest
from suite.outcome import USED
from suite.sweep import Sweep

EXECUTORS = ("local", "debug", "slurm")
GENERIC = dict(timeout_min=int, mem_gb=(int, float), nodes=int, cpus_per_task=int, gpus_per_node=int,
               tasks_per_node=int, name=str, stderr_to_stdout=bool)
# sbatch names that have a generic twin above: the profile uses the generic one
SLURM_TWINS = {"time": "timeout_min", "mem": "mem_gb", "ntasks_per_node": "tasks_per_node",
               "job_name": "name", "num_gpus": "gpus_per_node"}
SLURM_NAMES = tuple(sorted(set(SlurmExecutor._valid_parameters()) - set(SLURM_TWINS)))
ACTIVE_SLURM = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT")
DEFAULT_TIMEOUT_MIN = 24 * 60


# ------------------------------------------------------------------------------------- profiles

def load_profile(path: str | Path | None) -> dict[str, Any]:
    """A profile's submitit parameters, validated: generic names as they are, SLURM ones prefixed
    `slurm_` (AutoExecutor's convention)."""
    if path is None:
        return {}
    data = read_yaml(path, mapping=True)
    problems, out = [], {}
    for key, value in data.items():
        name = str(key).removeprefix("slurm_")
        at = f"{path}: {key}"
        if name in GENERIC:
            ok = isinstance(value, GENERIC[name]) and not isinstance(value, bool) or (
                GENERIC[name] is bool and isinstance(value, bool))
            if isinstance(value, str) and GENERIC[name] in (int, (int, float)):
                try:  # YAML 1.1: '1e3' arrives as a string
                    value, ok = float(value), True
                    value = int(value) if GENERIC[name] is int and value == int(value) else value
                except ValueError:
                    ok = False
            if not ok:
                want = "a number" if GENERIC[name] == (int, float) else GENERIC[name].__name__
                problems.append(f"{at}: expected {want}; got {value!r}")
            out[name] = value
        elif name in SLURM_TWINS:
            problems.append(f"{at}: use submitit's generic name {SLURM_TWINS[name]!r}")
        elif name in SLURM_NAMES:
            if name == "setup" and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                problems.append(f"{at}: expected a list of shell lines; got {value!r}")
            out[f"slurm_{name}"] = value
        else:
            hint = suggest(name, [*GENERIC, *SLURM_NAMES]) or f"known: {', '.join([*GENERIC, *SLURM_NAMES])}"
            problems.append(f"{at}: unknown submitit parameter; {hint}")
    if problems:
        raise ConfigError("\n".join(problems))
    return out


def resources(cell: RunConfig, profile: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The profile's parameters plus what the run fixes: one task per device (tasks_per_node =
    train.devices, = gpus_per_node on a GPU profile) and nodes = train.num_nodes."""
    t = cell.train
    params = dict(profile)
    want = {"tasks_per_node": t.devices, "nodes": t.num_nodes}
    if "gpus_per_node" in profile and t.accelerator != "cpu":
        want["gpus_per_node"] = t.devices
    problems = []
    for name, value in want.items():
        if name in profile and profile[name] != value:
            field_ = "train.num_nodes" if name == "nodes" else "train.devices"
            problems.append(f"{where}: {name}: {profile[name]}, but the sweep's {field_} is {value}; "
                            "one task per device: make them equal")
        params[name] = value
    if problems:
        raise ConfigError("\n".join(problems))
    params.setdefault("timeout_min", DEFAULT_TIMEOUT_MIN)
    return params


# ------------------------------------------------------------------------------------- the job

def global_rank(on_slurm: bool) -> int:
    return int(os.environ.get("SLURM_PROCID" if on_slurm else "RANK", 0))


def slurm_job_id() -> str | None:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


# a job that submitit requeues as it is, state included, on the timeout signal (suite.search's workers)
Checkpointable = submitit.helpers.Checkpointable


class TrainJob(submitit.helpers.Checkpointable):
    """One cell: train (or resume) it, record it in MLflow, score it when the sweep says so."""

    def __init__(self, run: RunConfig, run_id: str | None, tracking_uri: str | None, cwd: str,
                 eval_spec: dict[str, Any] | None = None, threads: int | None = None) -> None:
        self.run, self.run_id, self.tracking_uri, self.cwd = run, run_id, tracking_uri, cwd
        self.eval_spec, self.threads = eval_spec, threads
        self.callbacks: list[Callback] = []  # extra Lightning callbacks (suite.search: val loss to Optuna)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # Called by submitit's USR2 handler after SaveOnSignal saved last.ckpt: the same job runs
        # again and resumes from it.
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        import torch

        from suite.train import SIGNAL_CKPT, SaveOnSignal, train

        os.chdir(self.cwd)
        threads = self.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) or None
        if threads:
            torch.set_num_threads(threads)
        cfg = self.run  # the frozen RunConfig the sweep file was parsed into (pickled by submitit)
        # the link itself, never resolved: a save replaces it (suite.train.save_last)
        last = (cfg.run_dir / "checkpoints" / "last.ckpt").absolute()
        on_slurm = "SLURM_JOB_ID" in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        rank = global_rank(on_slurm)
        store = logger = None
        if self.tracking_uri and self.run_id:
            from suite import tracking

            store = tracking.Store(self.tracking_uri)
            logger = store.logger(self.run_id)
        if store and rank == 0:
            store.set_status(self.run_id, "running", host=socket.gethostname(), job_id=slurm_job_id()
                             or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or str(os.getpid()),
                             checkpoint=str(last), resumed=any(last.parent.glob("*.ckpt")),
                             restarts=os.environ.get("SLURM_RESTART_COUNT", "0"),
                             torch=torch.__version__, hardware=_hardware(torch))
            import yaml

            store.log_text(self.run_id, yaml.safe_dump(resolve_budget(cfg).to_dict(), sort_keys=False),
                           "config.yaml")
        saver = SaveOnSignal(last.parent / SIGNAL_CKPT)
        saver.install()
        plugins = []
        if on_slurm:
            from lightning.pytorch.plugins.environments import SLURMEnvironment

            plugins.append(SLURMEnvironment(auto_requeue=False))
        try:
            result = train(cfg, callbacks=[saver, *self.callbacks], logger=logger,
                           plugins=plugins)
            status = result.get("status", "finished")
            if rank == 0 and self.eval_spec and self.eval_spec.get("tasks") and status in USED:
                import functools

                from suite.evaluate import RESULT_FILE, write_result

                scores = self._evaluate(cfg, last)
                # one eval.json, the same text in the run directory and as the MLflow artifact
                write_result(scores, cfg.run_dir / RESULT_FILE,
                             functools.partial(store.log_text, self.run_id) if store else None)
                if store:
                    store.log_metrics(self.run_id, scores["metrics"], step=result["step"])
                    store.set_tags(self.run_id, benchmark_data=scores["meta"]["benchmark_data"])
                result["eval"] = scores["metrics"]
        except (SystemExit, KeyboardInterrupt) as err:
            if store and rank == 0:
                _quietly(store.set_status, self.run_id, "interrupted", interrupted_at=saver.saved_step,
                         note=f"{type(err).__name__}: {err}"[:500])
            raise
        except BaseException as err:
            if store and rank == 0:
                line = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                _quietly(store.log_text, self.run_id, traceback.format_exc(), "error.txt")
                _quietly(store.set_status, self.run_id, "failed", error=line[:1000])
            raise
        if store and rank == 0:
            # set_aside: unreadable checkpoints this attempt moved aside (suite.train.resume_point)
            store.set_status(self.run_id, result.get("status", "finished"), step=result.get("step"),
                             checkpoint=str(last), diverged_step=result.get("diverged_step"),
                             unigram_ce=result.get("unigram_ce"), config_sha=result.get("config_sha"),
                             set_aside=" | ".join(result.get("set_aside", [])) or None,
                             resumed_from=result.get("resumed_from"))
        return result

    def _evaluate(self, cfg: RunConfig, last: Path) -> dict[str, Any]:
        from suite.evaluate import evaluate_checkpoint

        spec = self.eval_spec
        return evaluate_checkpoint(str(last), list(spec["tasks"]), limit=spec.get("limit"),
                                   data_dir=spec.get("data_dir"), batch_size=spec.get("batch_size", 32),
                                   num_fewshot=spec.get("num_fewshot", 0), prefix_eot=spec.get("prefix_eot"))


def _hardware(torch: Any) -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"cpu x {os.cpu_count()}"


def _quietly(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception as err:  # recording must not hide the job's own error
        print(f"periln: could not record in MLflow: {err}", file=sys.stderr)


# ------------------------------------------------------------------------------------ submitting

@dataclass
class Plan:
    """What a submission does with each cell."""

    submit: list[RunConfig] = field(default_factory=list)
    resume: set[str] = field(default_factory=set)  # keys among `submit` that have a record
    skip: dict[str, str] = field(default_factory=dict)  # key -> why (finished, queued, ...)


@dataclass
class Submission:
    plan: Plan
    executor: str
    folder: Path | None = None
    job_ids: dict[str, str] = field(default_factory=dict)  # key -> job id
    results: dict[str, dict] = field(default_factory=dict)  # local/debug: key -> result
    errors: dict[str, str] = field(default_factory=dict)  # local/debug: key -> last error line
    not_started: dict[str, str] = field(default_factory=dict)  # local --deadline: key -> why
    script: str | None = None  # --dry-run: the sbatch script
    seconds: float = 0.0
    tracking_uri: str | None = None
    experiment_id: str | None = None  # the sweep's MLflow experiment (None: a dry run on no store)


def git_state(path: str | Path = ".") -> tuple[str, bool | None]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", None


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id (array tasks as <array>_<task>), from squeue; {} without SLURM."""
    bases = sorted({j.split("_")[0] for j in job_ids if j and j[0].isdigit()})
    if not bases:
        return {}
    states: dict[str, str] = {}
    for group in ([",".join(bases)], bases):  # one call; per job if squeue rejects a purged id
        ok = True
        for jobs in group:
            try:
                out = subprocess.run(["squeue", "--array", "--all", "--states=all", "--noheader",
                                      "--format=%i|%T", "--jobs", jobs], capture_output=True, text=True,
                                     timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                return {}
            ok = ok and out.returncode == 0
            for line in out.stdout.splitlines():
                if "|" in line:
                    job, state = line.strip().split("|", 1)
                    states[job] = state
        if ok or len(bases) == 1:
            break
    return states


def alive_here(host: str | None, pid: int | str | None) -> bool:
    """Whether a local/debug job (a sweep cell, a search worker) still runs: `host` is this machine
    and `pid` a live process other than this one (a record naming this very process is left from
    an earlier attempt of it: the debug executor runs jobs in-process)."""
    pid = str(pid or "")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid), 0)
        return True
    except OSError:  # gone; or another user's process that took the pid over (EPERM)
        return False


def plan(cells: list[RunConfig], records: Mapping[str, Any], executor: str,
         queued: Mapping[str, str] | None = None) -> Plan:
    """Submit unfinished keys; skip finished/diverged ones and ones whose job is still queued or
    running (a resubmission never runs a key twice at once): by its record's job id, by `queued`
    (key -> "job id STATE": the sweep's jobs squeue names, `queued_keys`) and, off SLURM, by the
    record's process (the training one, or the submitter that queued it) being alive here."""
    from suite.tracking import DONE

    out = Plan()
    slurm_ids = [r.tags.get("job_id", "") for r in records.values()
                 if r.status not in DONE and r.tags.get("executor") == "slurm"]
    states = job_states(slurm_ids)
    for cell in cells:
        rec = records.get(cell.key)
        if queued and cell.key in queued and (rec is None or rec.status not in DONE):
            out.skip[cell.key] = f"{rec.status if rec else 'queued'} (SLURM job {queued[cell.key]})"
            continue
        if rec is None:
            out.submit.append(cell)
            continue
        if rec.status in DONE:
            out.skip[cell.key] = rec.status
            continue
        if rec.tags.get("executor") == "slurm":
            # still in the queue (also an interrupted job that SLURM or submitit requeued)
            state = states.get(rec.tags.get("job_id", ""))
            if state in ACTIVE_SLURM:
                out.skip[cell.key] = f"{rec.status} (SLURM job {rec.tags['job_id']} {state})"
                continue
        elif rec.status in ("queued", "running") and alive_here(rec.tags.get("host"), rec.tags.get("job_id")):
            out.skip[cell.key] = f"{rec.status} (pid {rec.tags['job_id']})"
            continue
        out.submit.append(cell)
        out.resume.add(cell.key)
    return out


def preflight(sweep: Sweep, cells: Iterable[RunConfig], executor: str,
              profile: str | Path | None) -> dict[str, Any]:
    """What `submit` and suite.search check before they record anything: a known executor, a valid
    profile whose resources every cell agrees with, and one process per cell off SLURM. Returns the
    profile's parameters."""
    if executor not in EXECUTORS:
        hint = suggest(executor, EXECUTORS, n=1)
        raise ConfigError(f"--executor {executor!r}: unknown; {hint + ' ' if hint else ''}"
                          f"use one of {', '.join(EXECUTORS)}")
    params = load_profile(profile)
    data_dir = sweep.eval.data_dir if sweep.eval.enabled else None
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise ConfigError(f"{sweep.path}: eval.data_dir: {data_dir} is not a folder, and every cell would "
                          "train before failing on it; write the task data there first (periln data "
                          "fetch-benchmarks DIR, or periln data synthetic-benchmarks DIR)")
    for cell in cells:
        resources(cell, params, str(profile or "profile"))
        processes = cell.train.devices * cell.train.num_nodes
        if executor != "slurm" and processes > 1:
            raise ConfigError(f"{sweep.path}: {cell.key}: train.devices x train.num_nodes = {processes} "
                              f"processes need --executor slurm (one task per device); {executor} runs "
                              "one process per cell")
    return params


# ------------------------------------------------------------------- one submission at a time
# A key must never train twice at once. Three things guard it: a lock per sweep (two `periln
# submit` of one sweep take turns from reading the records to recording the job ids), an intent
# file per job array written before sbatch (so a submitter killed between sbatch and MLflow leaves
# the array's keys behind), and squeue asked for the sweep's jobs by name before anything is queued.

SUBMIT_LOCK = "submit.lock"
_TAG = re.compile(r"periln:([0-9a-f]{12}):(\S+)")  # the sbatch --comment of a sweep's job array


def ledger_dir(sweep: Sweep) -> Path:
    """<out_dir>/<sweep>/.submitit: the submission folders, the submit lock, the intent files."""
    return Path(sweep.out_dir).resolve() / sweep.name / ".submitit"


def private_dir(path: str | Path) -> Path:
    """`path` (created if missing) readable by this user only, whatever the umask: submitit's
    pickles inside hold the tracking URI, which may carry a password."""
    path = Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def job_name(sweep: Sweep, params: Mapping[str, Any]) -> str:
    """The SLURM job name of the sweep's arrays: the profile's `name`, else periln-<sweep name>."""
    return str(params.get("name") or f"periln-{sweep.name}")


def _ledger_tag(ledger: Path) -> str:
    # names the sweep's folder, not only its name: the same sweep name in another out_dir is another sweep
    return hashlib.sha1(str(ledger).encode()).hexdigest()[:12]


def read_intents(ledger: Path) -> dict[str, dict[str, Any]]:
    """The intent files left in `ledger` (stamp -> content): each a job array whose job ids are
    perhaps not in MLflow yet."""
    out = {}
    for path in sorted(ledger.glob("pending-*.json")):
        try:
            data = json.loads(path.read_text())
            out[path.stem.removeprefix("pending-")] = {**data, "path": path, "keys": list(data["keys"])}
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{path}: unreadable submission record; if no job of this sweep is in the "
                              "queue (squeue), delete it and submit again") from None
    return out


def sweep_jobs(name: str) -> list[tuple[str, str, str]] | None:
    """(job id, state, comment) of this user's active SLURM jobs named `name`, one array task a row
    (`123_4`); None when squeue cannot be asked."""
    try:
        out = subprocess.run(["squeue", "--me", "--array", "--noheader", "--states=all", "--name", name,
                              "--format=%i|%T|%k"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    rows = []
    for line in out.stdout.splitlines():
        job, _, rest = line.strip().partition("|")
        state, _, comment = rest.partition("|")
        if state in ACTIVE_SLURM:
            rows.append((job, state, comment))
    return rows


@dataclass
class Queued:
    """The sweep's active SLURM jobs mapped back to run keys."""

    keys: dict[str, str] = field(default_factory=dict)  # key -> "job id STATE"
    found: dict[str, dict[str, str]] = field(default_factory=dict)  # stamp -> {key: job id}, by squeue
    unmapped: list[str] = field(default_factory=list)  # active sweep jobs no record names


def queued_keys(rows: list[tuple[str, str, str]], ledger: Path, intents: Mapping[str, Mapping[str, Any]],
                records: Mapping[str, Any]) -> Queued:
    """Which key each active job of the sweep trains: by its comment's intent file (array index ->
    key), else by its job id in an intent file or an MLflow record. Jobs whose comment names
    another folder belong to a namesake sweep elsewhere and are left out."""
    mine = _ledger_tag(ledger)
    by_id = {r.tags["job_id"]: key for key, r in records.items() if r.tags.get("job_id")}
    for intent in intents.values():
        by_id.update({job: key for key, job in (intent.get("job_ids") or {}).items()})
    out = Queued()
    for job, state, comment in rows:
        tag = _TAG.search(comment)
        if tag and tag.group(1) != mine:
            continue
        intent = intents.get(tag.group(2)) if tag else None
        _, _, task = job.partition("_")  # a one-cell submission is a plain job: index 0
        index = int(task) if task.isdigit() else 0 if not task else None
        if intent is not None and index is not None and index < len(intent["keys"]):
            key = intent["keys"][index]
            out.found.setdefault(tag.group(2), {})[key] = job
        else:
            key = by_id.get(job)
        if key is None:
            out.unmapped.append(job)
        else:
            out.keys[key] = f"{job} {state}"
    return out


def fold_intents(intents: Mapping[str, Mapping[str, Any]], found: Mapping[str, Mapping[str, str]],
                 store: Any) -> int:
    """Record in MLflow the job ids a killed submitter left in its intent files (or that squeue
    named for them), then drop the files; returns how many ids were recorded. An intent whose
    array never reached the queue, or has left it, only goes: its jobs recorded themselves."""
    recorded = 0
    for stamp, intent in intents.items():
        ids = {**(intent.get("job_ids") or {}), **found.get(stamp, {})}
        for key, job in ids.items():
            if key in intent.get("run_ids", {}):
                store.set_tags(intent["run_ids"][key], job_id=job, executor="slurm")
                recorded += 1
        Path(intent["path"]).unlink(missing_ok=True)
    return recorded


def _test_point(moment: str) -> None:
    """For tests only (tests/test_slurm.py): PERILN_TEST_KILL_AT=<moment> SIGKILLs this process
    there, PERILN_TEST_PAUSE_AT=<moment>:<seconds> sleeps there. Moments: `plan` (records read,
    nothing recorded: a slow store; another submit must wait on the lock), `sbatch` (sbatch has
    answered, the job ids are written nowhere), `job-ids` (in the intent file, not in MLflow)."""
    if os.environ.get("PERILN_TEST_KILL_AT") == moment:
        os.kill(os.getpid(), signal.SIGKILL)
    where, _, seconds = os.environ.get("PERILN_TEST_PAUSE_AT", "").partition(":")
    if where == moment:
        time.sleep(float(seconds))


def submit(sweep: Sweep, executor: str = "local", profile: str | Path | None = None,
           only: list[str] | tuple[str, ...] = (), dry_run: bool = False, tracking_uri: str | None = None,
           folder: str | Path | None = None, parallel: int | None = None,
           progress: Any = None, deadline_s: float | None = None) -> Submission:
    """Submit the sweep's unfinished cells. local and debug block until every cell has ended;
    slurm returns once the job array is queued. `progress(line)` receives status lines. Local:
    `deadline_s` stops launching cells that cannot end within that many seconds of the start
    (running ones end; the others stay queued for a resubmission).

    The sweep's submit lock (<out_dir>/<sweep>/.submitit/submit.lock) is held from reading the
    records to recording the job ids (slurm: through sbatch; local and debug: until the cells are
    recorded, not while they train), so a second submit of the sweep sees the first's records."""
    from suite import tracking

    say = progress or (lambda line: None)
    cells = sweep.select(only)
    params = preflight(sweep, cells, executor, profile)  # before anything is recorded
    uri = tracking.store_uri(sweep.out_dir, tracking_uri)
    tracking.check_store(uri)  # an unusable store fails before the lock file is made
    start = time.perf_counter()
    ledger = ledger_dir(sweep)
    with contextlib.ExitStack() as held:
        if not dry_run:
            held.enter_context(file_lock(private_dir(ledger) / SUBMIT_LOCK))
        sub, jobs, run_ids, store = _plan_and_record(sweep, cells, executor, params, dry_run, uri,
                                                     ledger, folder, parallel)
        if executor == "slurm" and jobs:
            intents = _submit_slurm(sub, sweep, jobs, sub.plan.submit, params, dry_run, say, ledger)
            if not dry_run:
                for key, job_id in sub.job_ids.items():
                    store.set_tags(run_ids[key], job_id=job_id)
                for path in intents:  # all recorded in MLflow now
                    path.unlink(missing_ok=True)
    if executor == "slurm" or dry_run or not jobs:
        pass
    elif executor == "debug":
        _run_debug(sub, jobs, say)
    else:
        _prepare_token_caches(sub.plan.submit, say)
        flops = {c.key: f for c, f in zip(sub.plan.submit, _cell_flops(sub.plan.submit))}
        with Progress(sweep, [c.key for c in cells], uri, say):
            _run_local(sub, jobs, params, parallel or _default_parallel(sub.plan.submit, params), say,
                       deadline_s=deadline_s, flops=flops)
    sub.seconds = time.perf_counter() - start
    return sub


def _plan_and_record(sweep: Sweep, cells: list[RunConfig], executor: str, params: Mapping[str, Any],
                     dry_run: bool, uri: str, ledger: Path, folder: str | Path | None,
                     parallel: int | None) -> tuple[Submission, dict[str, TrainJob], dict, Any]:
    """`submit` under the lock: read the records (and, for slurm, the sweep's jobs in the queue),
    plan, record the cells to submit as queued, and build their jobs."""
    from suite import tracking

    store = exp_id = None
    if dry_run and tracking._sqlite_path(uri) and not tracking._sqlite_path(uri).exists():
        records: dict = {}
        exp_id = None
    else:
        if not dry_run:
            tracking.prepare_store(uri)  # once, before any job writes
        store = tracking.Store(uri)
        exp_id = store.experiment_id(sweep.name, tracking.artifact_root(uri, sweep.out_dir),
                                     create=not dry_run)
        records = store.runs(exp_id)
    queued = _slurm_queue(sweep, params, ledger, records, store, dry_run) if executor == "slurm" else None
    todo = plan(cells, records, executor, queued.keys if queued else None)
    _test_point("plan")
    sub = Submission(plan=todo, executor=executor, tracking_uri=uri, experiment_id=exp_id)

    # every recorded cell, finished ones too: a result is never reused under other settings
    params_of = {c.key: flatten(resolve_budget(c).to_dict()) for c in cells}
    conflicts = {c.key: tracking.param_conflicts(records[c.key], params_of[c.key])
                 for c in cells if c.key in records}
    conflicts = {k: v for k, v in conflicts.items() if v}
    if conflicts:
        key, lines = next(iter(conflicts.items()))
        others = f" and {len(conflicts) - 1} other cells" if len(conflicts) > 1 else ""
        changed = "; ".join(lines[:2])
        raise ConfigError(f"{sweep.path}: {key}{others} recorded with other settings ({changed}); "
                          "a run key keeps its settings for life: restore them, or use a new sweep name "
                          "(name: in the file) or another out_dir=DIR")
    if not todo.submit:
        return sub, {}, {}, store

    run_ids: dict[str, str | None] = {}
    if dry_run:
        run_ids = {c.key: getattr(records.get(c.key), "run_id", None) for c in todo.submit}
    else:
        git = git_state(Path(__file__).resolve().parent.parent)
        for cell in todo.submit:
            tags = tracking.run_tags(cell, Path(sweep.path).resolve(), executor, git)
            run_ids[cell.key] = tracking.open_run(store, exp_id, cell.key, records.get(cell.key),
                                                  params_of[cell.key], tags, status="queued")
            if executor != "slurm":  # queued by this live process: a second submit skips the key
                store.set_tags(run_ids[cell.key], host=socket.gethostname(), job_id=os.getpid())

    eval_spec = sweep.eval.to_dict() if sweep.eval.enabled else None
    cwd = os.getcwd()
    root = Path(folder) if folder else ledger
    sub.folder = (root / time.strftime("%Y%m%d-%H%M%S")).resolve() if not folder else root.resolve()
    if not dry_run:
        private_dir(sub.folder)
    threads = None
    if executor == "local":
        threads = max(1, (os.cpu_count() or 1) // (parallel or _default_parallel(todo.submit, params)))
    jobs = {c.key: TrainJob(c, None if dry_run else run_ids[c.key], None if dry_run else uri,
                            cwd, eval_spec, threads) for c in todo.submit}
    return sub, jobs, run_ids, store


def _slurm_queue(sweep: Sweep, params: Mapping[str, Any], ledger: Path, records: Mapping[str, Any],
                 store: Any, dry_run: bool) -> Queued | None:
    """The sweep's active SLURM jobs by key (squeue by job name); a submitter killed between sbatch
    and MLflow left its job ids in an intent file: recorded now. Refuses when an active job of the
    sweep cannot be mapped to a key (it might train one of the keys about to be queued)."""
    name = job_name(sweep, params)
    rows = sweep_jobs(name)
    if rows is None:
        if dry_run:
            return None
        raise ConfigError(f"squeue does not answer here; periln submit --executor slurm asks SLURM for "
                          f"the sweep's jobs ({name}) before it queues any: run it where squeue works")
    intents = read_intents(ledger) if ledger.is_dir() else {}
    queued = queued_keys(rows, ledger, intents, records)
    if queued.unmapped:
        arrays = sorted({j.split("_")[0] for j in queued.unmapped})
        raise ConfigError(f"{sweep.path}: SLURM job {', '.join(queued.unmapped[:3])}"
                          f"{' ...' if len(queued.unmapped) > 3 else ''} named {name} is queued or running "
                          "but no record says which cells it trains; submitting now could train a cell "
                          f"twice: wait until it ends, or cancel it (scancel {' '.join(arrays)})")
    if not dry_run and intents:
        fold_intents(intents, queued.found, store)
    return queued


def _default_parallel(cells: list[RunConfig], params: Mapping[str, Any]) -> int:
    """Cells at a time on this machine: one per CUDA device when the cells use the GPU (several
    small cells can share one: say so with --parallel), else one per `cpus_per_task` cores."""
    import torch

    if torch.cuda.is_available() and any(c.train.accelerator != "cpu" for c in cells):
        return max(1, torch.cuda.device_count())
    return max(1, (os.cpu_count() or 1) // int(params.get("cpus_per_task", 1)))


def _prepare_token_caches(cells: list[RunConfig], say) -> None:
    """Build each distinct token cache once, here, before any cell starts: N cells started together
    would otherwise tokenize the same data N times at once."""
    from suite.data import TokenData

    seen: set[str] = set()
    for cell in cells:
        sig = json.dumps(dataclasses.asdict(cell.data), sort_keys=True, default=str)
        if sig in seen:
            continue
        seen.add(sig)
        t0 = time.perf_counter()
        try:
            TokenData(cell).prepare_data()
        except Exception as err:  # the cell's own job fails on it and is recorded as failed
            say(f"token cache for {cell.data.source}: {_last_line(err)} (its cells will fail)")
            continue
        say(f"token cache ready for {cell.data.source} ({cell.data.tokenizer}) in "
            f"{time.perf_counter() - t0:.1f} s")


def _cell_flops(cells: list[RunConfig]) -> list[float]:
    """Training FLOPs of each cell (suite.cost): the deadline scales finished cells' time by them."""
    from suite import cost

    estimates = cost.estimate(cells)
    return [estimates[c.key].flops for c in cells]


def _group_by_resources(cells: list[RunConfig], params: Mapping[str, Any], where: str):
    groups: dict[str, tuple[dict, list[RunConfig]]] = {}
    for cell in cells:
        res = resources(cell, params, where)
        sig = json.dumps(res, sort_keys=True, default=str)
        groups.setdefault(sig, (res, []))[1].append(cell)
    return list(groups.values())


def _submit_slurm(sub: Submission, sweep: Sweep, jobs: dict[str, TrainJob], cells: list[RunConfig],
                  params: Mapping[str, Any], dry_run: bool, say, ledger: Path) -> list[Path]:
    """One job array per sweep (per distinct resource shape, should cells differ in devices). Each
    array's keys go to an intent file before sbatch, and its job ids after, so that a submitter
    killed in between leaves what it queued (`fold_intents`); the array's --comment names the
    file, so squeue maps its tasks back to keys (`queued_keys`). Returns the intent files."""
    intents = []
    folder = sub.folder if not dry_run else Path(tempfile.mkdtemp(prefix="periln-dry-run-"))
    with _no_sbatch() if dry_run else contextlib.nullcontext():
        for res, group in _group_by_resources(cells, params, "profile"):
            ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
            res = {"name": job_name(sweep, params), **res}
            res.setdefault("slurm_array_parallelism", len(group))
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            tag = f"periln:{_ledger_tag(ledger)}:{stamp}"
            res["slurm_comment"] = f"{tag} {res['slurm_comment']}" if res.get("slurm_comment") else tag
            try:
                ex.update_parameters(**res)
            except (ValueError, NameError, AssertionError, TypeError) as err:
                raise ConfigError(f"profile: submitit rejects the parameters: "
                                  f"{str(err).splitlines()[0]}") from None
            intent = {"job_name": res["name"], "comment": tag, "folder": str(folder),
                      "keys": [c.key for c in group],  # in array index order
                      "run_ids": {c.key: jobs[c.key].run_id for c in group}}
            path = ledger / f"pending-{stamp}.json"
            if not dry_run:
                intents.append(atomic_write_text(path, json.dumps(intent, indent=1)))
            with ex.batch():
                handles = [ex.submit(jobs[c.key]) for c in group]
            _test_point("sbatch")
            for cell, job in zip(group, handles):
                sub.job_ids[cell.key] = "dry-run" if dry_run else job.job_id
            if not dry_run:
                intent["job_ids"] = {c.key: sub.job_ids[c.key] for c in group}
                atomic_write_text(path, json.dumps(intent, indent=1))
                _test_point("job-ids")
            say(f"submitted {len(group)} cells as SLURM job array "
                f"{'(dry run)' if dry_run else handles[0].job_id.split('_')[0]}")
    if dry_run:
        scripts = sorted(folder.rglob(".submission_file_*.sh"))
        sub.script = scripts[-1].read_text() if scripts else None
        sub.folder = folder
    return intents


@contextlib.contextmanager
def _no_sbatch() -> Iterator[None]:
    """--dry-run: submitit's whole submission path (parameters checked, sbatch script written, one
    pickle per cell), with `sbatch` replaced by an echo of its reply."""
    with mock.patch.object(SlurmExecutor, "_make_submission_command",
                           lambda self, path: ["echo", "Submitted batch job 0"]), \
            mock.patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
        yield


def _last_line(err: BaseException | str) -> str:
    text = str(err).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(err).__name__


class _Reported:
    """submitit's debug executor opens pdb on a job's exception: report it as a value instead."""

    def __init__(self, job: TrainJob) -> None:
        self.job = job

    def __call__(self) -> tuple[str, Any]:
        try:
            return "ok", self.job()
        except Exception as err:  # recorded as failed by the job; the other cells go on
            return "error", _last_line(err)


def _run_debug(sub: Submission, jobs: dict[str, TrainJob], say) -> None:
    ex = submitit.AutoExecutor(folder=sub.folder / "%j", cluster="debug")
    ex.update_parameters(timeout_min=DEFAULT_TIMEOUT_MIN)
    for key, job in jobs.items():
        handle = ex.submit(_Reported(job))
        sub.job_ids[key] = handle.job_id
        kind, value = handle.result()
        if kind == "ok":
            sub.results[key] = value
            say(f"{key}: {value.get('status', 'finished')}")
        else:
            sub.errors[key] = value
            say(f"{key}: failed: {value}")


def _run_local(sub: Submission, jobs: dict[str, TrainJob], params: Mapping[str, Any], parallel: int,
               say, deadline_s: float | None = None, flops: Mapping[str, float] | None = None) -> None:
    """N at a time on this machine; blocks until all have ended. With `deadline_s`, a cell is
    launched only if it can end in time: its expected duration is its FLOPs times the slowest
    seconds-per-FLOP of the cells that ended so far (the first `parallel` cells start regardless:
    nothing is known yet); cells not launched are listed in `sub.not_started`."""
    ex = submitit.AutoExecutor(folder=sub.folder / "%j", cluster="local")
    ex.update_parameters(timeout_min=int(params.get("timeout_min", DEFAULT_TIMEOUT_MIN)))
    pending = list(jobs.items())
    running: dict[str, tuple[Any, float]] = {}
    t0 = time.monotonic()
    per_flop: list[float] = []  # seconds per FLOP of the cells that ended
    while pending or running:
        while pending and len(running) < parallel:
            key, job = pending.pop(0)
            left = None if deadline_s is None else deadline_s - (time.monotonic() - t0)
            if left is not None and (left <= 0 or (per_flop and flops and key in flops
                                                   and max(per_flop) * flops[key] > left)):
                need = max(per_flop) * flops[key] if per_flop and flops and key in flops else 0.0
                sub.not_started[key] = f"~{need:.0f} s needed, {max(left, 0):.0f} s left before the deadline"
                say(f"{key}: not started ({sub.not_started[key]})")
                continue
            handle = ex.submit(job)
            running[key] = (handle, time.monotonic())
            sub.job_ids[key] = handle.job_id
        time.sleep(0.5)
        for key, (handle, started) in list(running.items()):
            if not handle.done():
                continue
            del running[key]
            try:
                sub.results[key] = handle.result()
                say(f"{key}: {sub.results[key].get('status', 'finished')}")
                if flops and flops.get(key):
                    per_flop.append((time.monotonic() - started) / flops[key])
            except Exception as err:
                sub.errors[key] = _last_line(err)
                say(f"{key}: failed: {sub.errors[key]}")


def run_jobs(jobs: Mapping[str, Any], executor: str, params: Mapping[str, Any], folder: Path, name: str,
             parallel: int | None = None, progress: Any = None) -> Submission:
    """Callables other than sweep cells (suite.search's trial workers) through the same executors:
    debug in this process, local `parallel` at a time (blocking), slurm one job array with `params`
    (a profile checked by `resources`); returns at once for slurm (then `wait`)."""
    say = progress or (lambda line: None)
    sub = Submission(plan=Plan(), executor=executor, folder=private_dir(Path(folder).resolve()))
    if executor == "debug":
        _run_debug(sub, dict(jobs), say)
    elif executor == "local":
        _run_local(sub, dict(jobs), params, parallel or len(jobs), say)
    else:
        ex = submitit.AutoExecutor(folder=sub.folder / "%j", cluster="slurm")
        try:
            ex.update_parameters(**{"name": name, "slurm_array_parallelism": len(jobs), **params})
        except (ValueError, NameError, AssertionError, TypeError) as err:
            raise ConfigError(f"profile: submitit rejects the parameters: "
                              f"{str(err).splitlines()[0]}") from None
        with ex.batch():
            handles = [ex.submit(job) for job in jobs.values()]
        sub.job_ids = {key: h.job_id for key, h in zip(jobs, handles)}
        say(f"submitted {len(jobs)} jobs as SLURM job array {handles[0].job_id.split('_')[0]}")
    return sub


def wait(sub: Submission, poll_s: float = 2.0, timeout_s: float | None = None) -> dict[str, str]:
    """SLURM: block until every submitted job has left the queue; returns key -> final state."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        states = job_states(list(sub.job_ids.values()))
        final = {k: states.get(j, "UNKNOWN") for k, j in sub.job_ids.items()}
        if all(s not in ACTIVE_SLURM for s in final.values()):
            return final
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"jobs still active after {timeout_s} s: {final}")
        time.sleep(poll_s)


# -------------------------------------------------------------------------------------- progress

# states in which a cell will not run again in this submission
ENDED = ("finished", "failed_to_learn", "diverged", "failed")


def clock(seconds: float) -> str:
    """m:ss, h:mm:ss from an hour on."""
    h, rest = divmod(int(round(seconds)), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eta_s(ended: int, to_go: int, elapsed_s: float) -> float | None:
    """Seconds until the `to_go` cells (running and left) end, at the pace of the `ended` cells that
    ended during the `elapsed_s` seconds so far (wall-clock, so the parallelism is in it); None
    before any cell ended."""
    return None if ended <= 0 else to_go * elapsed_s / ended


class Progress:
    """Cells done / running / left from the MLflow records, and an ETA once a cell has ended in this
    submission, said whenever the counts change (and every `every_s` seconds while nothing does,
    so a long cell still shows life). A context manager: says the counts on entry and exit."""

    def __init__(self, sweep: Sweep, keys: Iterable[str], uri: str, say: Any,
                 poll_s: float = 2.0, every_s: float = 30.0) -> None:
        self.sweep, self.keys, self.uri, self.say = sweep, set(keys), uri, say
        self.poll_s, self.every_s = poll_s, every_s
        self.start = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="periln-progress", daemon=True)
        self._last: tuple[int, int, int] | None = None
        self._last_t = 0.0
        self._done_at_start: int | None = None

    def counts(self) -> tuple[int, int, int]:
        states = [r.state for r in cell_states(self.sweep, self.uri) if r.key in self.keys]
        done = sum(s in ENDED for s in states)
        running = sum(s == "running" for s in states)
        return done, running, len(states) - done - running

    def line(self, counts: tuple[int, int, int], elapsed_s: float) -> str:
        done, running, left = counts
        if self._done_at_start is None:
            self._done_at_start = done
        eta = eta_s(done - self._done_at_start, running + left, elapsed_s)
        tail = f", about {clock(eta)} to go" if eta is not None and running + left else ""
        return f"cells: {done} done, {running} running, {left} left{tail}"

    def report(self, force: bool = False) -> None:
        try:
            counts = self.counts()
        except Exception:  # noqa: BLE001 -- the store is busy: the next poll reports
            return
        now = time.perf_counter()
        if force or counts != self._last or now - self._last_t >= self.every_s:
            self.say(self.line(counts, now - self.start))
            self._last, self._last_t = counts, now

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.report()

    def __enter__(self) -> Progress:
        self.report(force=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.report(force=True)


# ---------------------------------------------------------------------------------------- status

@dataclass
class CellState:
    key: str
    state: str  # pending, queued, running, interrupted, finished, failed, diverged
    step: int | None = None
    loss: float | None = None
    job_id: str | None = None
    note: str = ""


def cell_states(sweep: Sweep, tracking_uri: str | None = None) -> list[CellState]:
    """One row per cell from the MLflow records, refined by squeue for SLURM jobs: a record that
    says queued/running/interrupted while its job is pending shows `queued`; one whose job left
    the queue without recording an end shows `failed` with the SLURM state."""
    from suite import tracking

    uri = tracking.store_uri(sweep.out_dir, tracking_uri)
    db = tracking._sqlite_path(uri)
    records: dict = {}
    if db is None or db.exists():
        store = tracking.Store(uri)
        records = store.runs(store.experiment_id(sweep.name, create=False))
    ids = [r.tags.get("job_id", "") for r in records.values() if r.tags.get("executor") == "slurm"]
    squeue = job_states(ids)
    rows = []
    for cell in sweep.cells:
        rec = records.get(cell.key)
        if rec is None:
            rows.append(CellState(cell.key, "pending"))
            continue
        loss = rec.metrics.get("train/loss")
        row = CellState(cell.key, rec.status, rec.step, loss, rec.tags.get("job_id"),
                        rec.tags.get("error", ""))
        if rec.tags.get("executor") == "slurm" and rec.status in ("queued", "running", "interrupted"):
            state = squeue.get(rec.tags.get("job_id", ""))
            if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED"):
                row.state = "queued"
            elif state in ACTIVE_SLURM:
                row.state = "running"
            elif state is not None and rec.status != "interrupted":
                row.state, row.note = "failed", f"SLURM job ended {state} without a record"
        rows.append(row)
    return rows


def mlflow_server_command(out_dir: str | Path, tracking_uri: str | None = None,
                          port: int = 5000) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` command line for a results directory's store, UI on 127.0.0.1, and the
    environment it needs: the store URI travels there (MLFLOW_BACKEND_STORE_URI), not on the
    command line, where `ps` would show any password in it."""
    from suite import tracking

    uri = tracking.store_uri(out_dir, tracking_uri)
    tracking.check_store(uri)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    if tracking._sqlite_path(uri):
        tracking.prepare_store(uri)
        cmd += ["--artifacts-destination", str(Path(out_dir).resolve() / "mlartifacts")]
    return cmd, {"MLFLOW_BACKEND_STORE_URI": uri}

"""Learning-rate search with Optuna, then seeds at the best rate: the only module importing optuna.

The paper compares each placement at its own best learning rate. `periln search SWEEP` does the
tuning from the sweep's `search:` section (suite.sweep.SearchSpec); `periln submit SWEEP
--best-lr-from SWEEP --seeds N` then runs the seeds at each (placement, size)'s chosen rate.

Studies. One per (placement, size) -- and variant, when the grid varies a field the run key does not
name -- named `<sweep>/<placement[_args]>-<size>[-<variant>]`, minimizing the final val loss
(`val_loss` in the run's result.json). Every trial is an ordinary run of the sweep: the cell at the
trial's lr and the search seed, with its usual run key, run directory and MLflow run (tags `study`,
`trial`, `run_key`; the trial holds `run_key` and `mlflow_run_id` as user attrs). A finished trial
is therefore never trained again, and the seed cell at the chosen lr and the search seed *is* that
trial's run.

- grid (default): the sweep's lr values, enqueued (`study.enqueue_trial`) and pulled until every
  queue is empty, so each value runs exactly once whatever the number of workers (GridSampler alone
  runs duplicates with parallel workers: docs/stack.md).
- tpe: `n_trials` empty slots, enqueued and pulled the same way; each slot draws its lr with TPE
  (constant liar, so parallel workers spread out) from the log range `search.lr`. The run uses the
  draw rounded to 3 significant digits (the run key names it; user attr `run_lr`).

Outcomes (user attrs `outcome` and `reason`): finished -> COMPLETE with the val loss; diverged
(result status "diverged", suite/diagnostics.py) -> FAIL with the divergence reason, never a number;
no-val-loss (none logged, or not finite) -> FAIL; error (the run raised; `error` = the last line)
-> FAIL; pruned -> PRUNED; interrupted (the worker died mid-trial) -> FAIL, found by the next
`periln search`. A rerun of `periln search` keeps COMPLETE, PRUNED, diverged and no-val-loss
trials, leaves trials whose worker is alive alone, fails those of dead workers, and enqueues again
the points left without a trial (errors and interruptions are retried; the run resumes from its
last.ckpt).

Workers: K jobs (`search.workers`, `--workers`) through suite.launch (local | debug | slurm job
array), each pulling trials from every study of the sweep until all queues are empty. A worker is a
Checkpointable: on SLURM's timeout signal the trial's run saves last.ckpt (suite.train.SaveOnSignal)
and the requeued worker continues that trial. With train.devices > 1, rank 0 pops and the job's other
ranks follow through small files in the submitit folder.

Storage: Optuna's journal file (`JournalStorage(JournalFileBackend(path))`) works from many processes
and nodes on a shared file system (the default, `<out_dir>/<sweep>/search/optuna.journal`); sqlite
(`storage: sqlite`) for one machine.

Pruning (off by default): Optuna's median pruner on the val loss reported at every validation. It
stops trials early, so the chosen lr then comes from a different protocol than the paper's (full
runs at every lr). A pruned run is left "interrupted" in MLflow and continues if submitted again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch.callbacks import Callback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from models import ConfigError
from suite import launch
from suite.config import RunConfig, flatten, run_config_from_dict
from suite.cost import resolve_budget
from suite.files import atomic_write_text, file_lock
from suite.sweep import SearchSpec, Sweep
from suite.train import finished_result

OBJECTIVE = "val_loss"  # result.json field: the final val loss
SETTLED = ("finished", "diverged", "no-val-loss", "pruned")  # outcomes a rerun keeps
RETRIED = ("error", "interrupted")  # outcomes a rerun enqueues again
CSV_COLUMNS = ("sweep", "study", "arm", "placement", "placement_args", "size", "variant", "method",
               "trial", "lr", "state", "val_loss", "outcome", "reason", "run_key", "chosen")
UNLABELLED_GRACE_S = 600  # a RUNNING trial without worker info this old is taken as abandoned
RUN_LR_DIGITS = 3  # tpe: significant digits of the lr a run uses (the run key names it)

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------------- studies

@dataclass(frozen=True)
class Group:
    """One study: the cells of one (placement, size, variant) at the search seed."""

    study: str  # <sweep>/<label>
    label: str  # <placement[_args]>-<size>[-<variant>]
    arm: str  # the label without the size (tables' `arm`)
    cells: tuple[RunConfig, ...]  # grid: one per lr, sorted by lr; tpe: the template first

    @property
    def template(self) -> RunConfig:
        return self.cells[0]

    @property
    def lrs(self) -> list[float]:
        return [c.lr for c in self.cells]


def search_seed(sweep: Sweep, spec: SearchSpec) -> int:
    return spec.seed if spec.seed is not None else min(c.seed for c in sweep.cells)


def plan_groups(sweep: Sweep, only: Sequence[str] = ()) -> list[Group]:
    """The sweep's studies (of the cells `only` selects), in grid order."""
    spec = _spec(sweep)
    seed = search_seed(sweep, spec)
    by_label: dict[str, list[RunConfig]] = {}
    for cell in sweep.select(list(only)):
        by_label.setdefault(cell.group, []).append(cell)
    groups, problems = [], []
    for label, cells in by_label.items():
        at_seed = [c for c in cells if c.seed == seed]
        if not at_seed:
            problems.append(f"{sweep.path}: search.seed: {label} has no cell with seed {seed} "
                            f"(its seeds: {sorted({c.seed for c in cells})})")
            continue
        at_seed.sort(key=lambda c: c.lr)
        if spec.method == "grid" and len(at_seed) < 2:
            problems.append(f"{sweep.path}: search: {label} has {len(at_seed)} learning rate; method "
                            "grid needs at least two (grid.lr: [...])")
            continue
        groups.append(Group(study=f"{sweep.name}/{label}", label=label, arm=at_seed[0].arm,
                            cells=tuple(at_seed)))
    if problems:
        raise ConfigError("\n".join(problems))
    return groups


def _spec(sweep: Sweep) -> SearchSpec:
    if sweep.search is None:
        raise ConfigError(f"{sweep.path}: no search: section; add one, e.g. search: {{method: grid, "
                          "workers: 2} (README, \"Tune learning rates, then run seeds\")")
    return sweep.search


def distribution(spec: SearchSpec, group: Group) -> tuple[float, float]:
    """The lr range every trial of the study suggests from (log scale)."""
    if spec.method == "tpe":
        return spec.lr
    return min(group.lrs), max(group.lrs)


def run_lr(spec: SearchSpec, lr: float) -> float:
    return lr if spec.method == "grid" else float(f"{lr:.{RUN_LR_DIGITS}g}")


def trial_cell(spec: SearchSpec, group: Group, lr: float) -> RunConfig:
    """The run a trial at `lr` trains: the sweep's cell (grid), or the template at the rounded lr."""
    lr = run_lr(spec, lr)
    for cell in group.cells:
        if math.isclose(cell.lr, lr, rel_tol=1e-9):
            return cell
    if spec.method == "grid":
        raise ConfigError(f"{group.study}: lr {lr:g} is not on the sweep's grid ({group.lrs}); the "
                          "grid changed since the search started: use a new sweep name")
    return dataclasses.replace(group.template, lr=lr)


# ------------------------------------------------------------------------------------- storage

def storage_url(sweep: Sweep) -> str:
    """`journal:<path>` or an sqlite:/// URL (absolute, so jobs in other directories agree)."""
    spec, base = _spec(sweep), Path(sweep.out_dir).resolve() / sweep.name / "search"
    if spec.storage == "journal":
        return f"journal:{base / 'optuna.journal'}"
    if spec.storage == "sqlite":
        return f"sqlite:///{base / 'optuna.db'}"
    if "://" in spec.storage:
        return spec.storage
    return f"journal:{Path(spec.storage).expanduser().resolve()}"


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # several workers write at once: wait for sqlite's lock rather than fail
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


def existing_storage(sweep: Sweep) -> optuna.storages.BaseStorage:
    """The sweep's search storage; an error when no search has run yet (nothing is created)."""
    url = storage_url(sweep)
    for scheme in ("journal:", "sqlite:///"):
        if url.startswith(scheme) and not Path(url.removeprefix(scheme)).is_file():
            raise ConfigError(f"{sweep.path}: no search yet ({url.removeprefix(scheme)} does not exist); "
                              f"run: periln search {sweep.path}")
    return open_storage(url)


def _locked(url: str) -> AbstractContextManager[None]:
    """One coordinator at a time reconciles a storage (two at once would enqueue twice); a
    database server's storage has no file beside it to lock."""
    if not url.startswith(("journal:", "sqlite:///")):
        return nullcontext()
    return file_lock(url.removeprefix("journal:").removeprefix("sqlite:///") + ".coordinator.lock")


def _sampler(spec: SearchSpec, number: int) -> optuna.samplers.BaseSampler:
    if spec.method == "tpe":
        # NOTE: seeded per trial number: workers seeded alike would draw the same lr at once
        return optuna.samplers.TPESampler(seed=spec.sampler_seed * 1_000_003 + number, constant_liar=True,
                                          n_startup_trials=spec.startup_trials)
    return optuna.samplers.RandomSampler(seed=number)  # unused: every grid trial is enqueued


def _pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    if spec.pruning:
        return optuna.pruners.MedianPruner(n_startup_trials=spec.prune_startup_trials,
                                           n_warmup_steps=spec.prune_warmup_steps)
    return optuna.pruners.NopPruner()


# ------------------------------------------------------------------------------- trial queue

def pop_trial(storage: optuna.storages.BaseStorage, study_names: Sequence[str]) -> tuple[str, int] | None:
    """Take the next WAITING trial of the first study that has one (marked RUNNING atomically: two
    workers never get the same trial); None when every queue is empty. Optuna's own pop, minus
    ask()'s fallback of creating a fresh trial when the queue is empty."""
    for name in study_names:
        study_id = storage.get_study_id_from_name(name)
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            try:
                if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return name, trial.number
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    return None


@dataclass
class Outcome:
    """How a trial ended: `outcome` is finished (COMPLETE with `value`), pruned (PRUNED) or one of
    diverged, no-val-loss, error (FAIL, with `reason`)."""

    outcome: str
    value: float | None = None
    reason: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> Outcome:
        attrs = {k: result[k] for k in ("step", "diverged_step") if result.get(k) is not None}
        if result.get("status") == "diverged":
            return cls("diverged", reason=str(result.get("diverged_reason") or "diverged"), attrs=attrs)
        value = result.get(OBJECTIVE)
        if value is None:
            return cls("no-val-loss", reason="the run logged no val loss (val/loss)", attrs=attrs)
        if not math.isfinite(float(value)):
            return cls("no-val-loss", reason=f"val loss is {value}", attrs=attrs)
        return cls("finished", value=float(value), attrs=attrs)


def finish_trial(study: optuna.Study, trial: optuna.Trial, out: Outcome) -> None:
    for key, value in {"outcome": out.outcome, "reason": out.reason, **out.attrs}.items():
        trial.set_user_attr(key, value)
    if out.outcome == "finished":
        study.tell(trial, out.value)
    elif out.outcome == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


TrialRunner = Callable[[optuna.Study, optuna.Trial], Outcome]


def work(storage: optuna.storages.BaseStorage, study_names: Sequence[str], run: TrialRunner,
         make_study: Callable[[str, int], optuna.Study] | None = None,
         current: tuple[str, int] | None = None,
         on_start: Callable[[tuple[str, int] | None], None] | None = None) -> list[tuple[str, int, str]]:
    """The worker loop: continue `current` if it is still RUNNING, then pop trials until every queue
    is empty; `run(study, trial)` trains (or, in tests, evaluates) and returns the Outcome. An
    exception from `run` fails the trial (outcome error) and the loop goes on; SystemExit and
    KeyboardInterrupt (a signal, the job's end) leave the trial RUNNING for a requeue or the next
    `periln search`. Returns (study, trial number, outcome) of each trial it ended."""
    make_study = make_study or (lambda name, number: optuna.load_study(study_name=name, storage=storage))
    done = []
    while True:
        picked = current if current is not None and _is_running(storage, *current) else pop_trial(
            storage, study_names)
        current = None
        if on_start:
            on_start(picked)
        if picked is None:
            return done
        name, number = picked
        study = make_study(name, number)
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name),
                                                                   number)
        trial = optuna.Trial(study, trial_id)
        trial.set_user_attr("worker", _worker_info())
        try:
            out = run(study, trial)
        except Exception as err:  # the run's own failure: recorded, the other trials go on
            lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            out = Outcome("error", reason=f"{type(err).__name__}: {lines[-1][:300] if lines else ''}")
        finish_trial(study, trial, out)
        done.append((name, number, out.outcome))


def _own_running_trial(storage: optuna.storages.BaseStorage,
                       study_names: Sequence[str]) -> tuple[str, int] | None:
    """After SLURM requeued this job (scontrol requeue, preemption): the trial it was running, by
    its SLURM job id, which a requeue keeps."""
    job = launch.slurm_job_id()
    if not job:
        return None
    for name in study_names:
        study_id = storage.get_study_id_from_name(name)
        for t in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            if (t.user_attrs.get("worker") or {}).get("job_id") == job:
                return name, t.number
    return None


def _is_running(storage: optuna.storages.BaseStorage, name: str, number: int) -> bool:
    study_id = storage.get_study_id_from_name(name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    return storage.get_trial(trial_id).state == TrialState.RUNNING


def _worker_info() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "job_id": launch.slurm_job_id(),
            "executor": os.environ.get("SUBMITIT_EXECUTOR", "")}


# --------------------------------------------------------------------------------- the worker

class Pruned(SystemExit):
    """Raised from a validation by the median pruner; SystemExit so that suite.launch.TrainJob
    records the run as interrupted (resumable), not failed."""


class ValLossToTrial(Callback):
    """Report each val loss to the trial (Optuna's intermediate values: the pruner's input and the
    intermediate-values plot); with pruning on, stop the run when the pruner says so (all ranks
    agree through one all-reduce)."""

    def __init__(self, trial: optuna.Trial | None, prune: bool) -> None:
        self.trial, self.prune = trial, prune

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/loss")
        step = trainer.global_step
        stop = False
        if self.trial is not None and value is not None and math.isfinite(float(value)):
            with warnings.catch_warnings():  # a resumed run reports its last step again: ignored
                warnings.simplefilter("ignore")
                self.trial.report(float(value), step)
            stop = self.prune and self.trial.should_prune()
        if self.prune and trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            loss = f" (val loss {float(value):.4f})" if value is not None else ""
            raise Pruned(f"pruned by the median pruner at step {step}{loss}")


class TrialWorker(launch.Checkpointable):
    """One worker job: pulls the search's trials and trains each as a sweep run (suite.launch.TrainJob:
    MLflow records, save-on-signal). Requeued as it is, it continues its current trial first."""

    def __init__(self, index: int, sweep: dict[str, Any], spec: dict[str, Any],
                 studies: dict[str, list[dict[str, Any]]], storage: str, tracking_uri: str, cwd: str,
                 folder: str, executor: str, threads: int | None = None) -> None:
        self.index, self.sweep, self.spec, self.studies = index, sweep, spec, studies
        self.storage, self.tracking_uri, self.cwd, self.folder = storage, tracking_uri, cwd, folder
        self.executor, self.threads = executor, threads
        self.current: tuple[str, int] | None = None
        self.round = 0

    # plain data in, objects rebuilt here: the worker is pickled for submitit
    def _group(self, name: str) -> Group:
        cells = tuple(run_config_from_dict(c, name) for c in self.studies[name])
        label = name.split("/", 1)[1]
        return Group(study=name, label=label, arm=cells[0].arm, cells=cells)

    def _spec(self) -> SearchSpec:
        return SearchSpec(**{**self.spec, "lr": tuple(self.spec["lr"]) if self.spec.get("lr") else None})

    def __call__(self) -> dict[str, Any]:
        os.chdir(self.cwd)
        on_slurm = "SLURM_JOB_ID" in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        rank = launch.global_rank(on_slurm)
        world = int(os.environ.get("SLURM_NTASKS", "1")) if on_slurm else 1
        if rank != 0:
            return self._follow()
        storage = open_storage(self.storage)
        spec = self._spec()
        from suite import tracking

        store = tracking.Store(self.tracking_uri)
        ctx = dict(store=store, exp_id=store.experiment_id(self.sweep["name"]),
                   git=launch.git_state(Path(__file__).resolve().parent.parent))

        def make_study(name: str, number: int) -> optuna.Study:
            return optuna.load_study(study_name=name, storage=storage, sampler=_sampler(spec, number),
                                     pruner=_pruner(spec))

        def on_start(picked: tuple[str, int] | None) -> None:
            self.current = picked  # kept across a requeue (checkpoint() pickles this worker)
            if world > 1 and picked is None:
                self._tell_followers({"done": True})

        def run(study: optuna.Study, trial: optuna.Trial) -> Outcome:
            return self._run_trial(spec, study, trial, world, ctx)

        current = self.current or _own_running_trial(storage, list(self.studies))
        done = work(storage, list(self.studies), run, make_study, current, on_start)
        self.current = None
        return {"status": f"worker {self.index}: {len(done)} trials",
                "trials": [dict(study=s, trial=n, outcome=o) for s, n, o in done]}

    def _run_trial(self, spec: SearchSpec, study: optuna.Study, trial: optuna.Trial, world: int,
                   ctx: dict[str, Any]) -> Outcome:
        from suite import tracking

        group = self._group(study.study_name)
        low, high = distribution(spec, group)
        lr = trial.suggest_float("lr", low, high, log=True)
        cell = trial_cell(spec, group, lr)
        trial.set_user_attr("run_lr", cell.lr)
        trial.set_user_attr("run_key", cell.key)
        store, exp_id, key = ctx["store"], ctx["exp_id"], cell.key
        params = flatten(resolve_budget(cell).to_dict())
        tags = tracking.run_tags(cell, self.sweep["path"], self.executor, ctx["git"],
                                 study=study.study_name, trial=trial.number, search_method=spec.method)
        rec = store.runs(exp_id).get(key)
        mine = {j for j in (launch.slurm_job_id(), os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
                            str(os.getpid())) if j}
        if rec is not None and rec.tags.get("job_id") not in mine:  # not this job's own, requeued
            busy = launch.plan([cell], {key: rec}, self.executor).skip.get(key)
            if busy and busy not in tracking.DONE:  # e.g. `periln submit` runs this key right now
                raise ConfigError(f"run key {key} is {busy} elsewhere; retried by the next periln search")
        conflicts = tracking.param_conflicts(rec, params) if rec is not None else []
        if conflicts:
            raise ConfigError(f"run key {key} is recorded with other settings ({conflicts[0]})")
        run_id = tracking.open_run(store, exp_id, key, rec, params, tags)
        trial.set_user_attr("mlflow_run_id", run_id)
        result = finished_result(cell)
        if result is not None:  # trained before (an earlier search, or submit): reuse its record
            trial.set_user_attr("reused", True)
            if rec is None or rec.status not in tracking.DONE:
                store.log_metrics(run_id, {k: v for k, v in (("val/loss", result.get("val_loss")),
                                                              ("train/loss", result.get("train_loss")))
                                           if v is not None}, step=result.get("step"))
                store.set_status(run_id, result["status"], step=result.get("step"))
            return Outcome.from_result(result)
        job = launch.TrainJob(cell, run_id, self.tracking_uri, self.cwd, self.sweep.get("eval"),
                              self.threads)
        job.callbacks = [ValLossToTrial(trial, spec.pruning)]
        if world > 1:
            self._tell_followers({"cell": cell.to_dict(), "run_id": run_id, "prune": spec.pruning})
        try:
            result = job()
        except Pruned as err:
            return Outcome("pruned", reason=str(err))
        return Outcome.from_result(result)

    # multi-device trials: rank 0 pops, the other ranks of this job follow
    def _channel(self, round_: int) -> Path:
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        return Path(self.folder) / ".ranks" / f"{launch.slurm_job_id()}-r{restart}-{round_}.json"

    def _tell_followers(self, message: dict[str, Any]) -> None:
        path = self._channel(self.round)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(message))
        self.round += 1

    def _follow(self) -> dict[str, Any]:
        n = 0
        while True:
            path = self._channel(self.round)
            while not path.is_file():
                time.sleep(1.0)
            message = json.loads(path.read_text())
            self.round += 1
            if message.get("done"):
                return {"status": f"worker {self.index}: followed {n} trials"}
            # the leader's cell arrives as plain data over the channel: parsed at that edge
            cell = run_config_from_dict(message["cell"], "search channel")
            job = launch.TrainJob(cell, message["run_id"], self.tracking_uri, self.cwd,
                                  self.sweep.get("eval"), self.threads)
            job.callbacks = [ValLossToTrial(None, message["prune"])]
            try:
                job()
            except Pruned:
                pass
            except Exception as err:  # rank 0 records the trial's failure; follow the next one
                print(f"periln: rank {os.environ.get('SLURM_PROCID')}: trial failed: {err}", flush=True)
            n += 1


# ---------------------------------------------------------------------------------- reconciling

@dataclass
class StudyState:
    group: Group
    enqueued: int = 0  # trials put in the queue by this call
    stale: list[int] = field(default_factory=list)  # RUNNING trials of dead workers, failed now
    alive: list[int] = field(default_factory=list)  # RUNNING trials left to their workers


def _trial_lr(t: FrozenTrial) -> float | None:
    lr = t.params.get("lr", t.system_attrs.get("fixed_params", {}).get("lr"))
    return None if lr is None else float(lr)


def _liveness(trials: Sequence[FrozenTrial]) -> dict[int, bool | None]:
    """RUNNING trial number -> its worker is alive (True), gone (False), or unknown (None: another
    host, no SLURM job id)."""
    infos = {t.number: t.user_attrs.get("worker") or {} for t in trials if t.state == TrialState.RUNNING}
    jobs = [i["job_id"] for i in infos.values() if i.get("job_id")]
    states = launch.job_states(jobs) if jobs else {}
    out: dict[int, bool | None] = {}
    for number, info in infos.items():
        if info.get("job_id"):
            out[number] = states.get(info["job_id"]) in launch.ACTIVE_SLURM
        elif info.get("host") == socket.gethostname():
            out[number] = launch.alive_here(info["host"], info.get("pid"))
        elif not info:  # popped, not yet labelled: give its worker 10 minutes to label it
            start = next(t.datetime_start for t in trials if t.number == number)
            age = (datetime.now(UTC) - start.astimezone(UTC)).total_seconds() if start else 0
            out[number] = None if age < UNLABELLED_GRACE_S else False
        else:  # another host, no SLURM job: cannot tell from here
            out[number] = None
    return out


def reconcile(storage: optuna.storages.BaseStorage, study: optuna.Study, group: Group,
              spec: SearchSpec) -> StudyState:
    """Make the queue hold exactly the trials still to run: fail the RUNNING trials of dead
    workers, then enqueue each grid lr (tpe: each retried lr, then empty slots up to n_trials)
    that has no kept, waiting or live trial."""
    state = StudyState(group)
    trials = study.get_trials(deepcopy=False)
    for number, alive in _liveness(trials).items():
        if alive is False:
            trial = next(t for t in trials if t.number == number)
            worker = trial.user_attrs.get("worker") or {}
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), number)
            storage.set_trial_user_attr(trial_id, "outcome", "interrupted")
            storage.set_trial_user_attr(
                trial_id, "reason", f"interrupted: worker {worker.get('job_id') or worker.get('pid') or '?'} "
                f"on {worker.get('host', '?')} ended mid-trial")
            study.tell(number, state=TrialState.FAIL)
            state.stale.append(number)
        else:
            state.alive.append(number)
    trials = study.get_trials(deepcopy=False)

    def kept(t: FrozenTrial) -> bool:
        return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and t.user_attrs.get("outcome") in SETTLED)

    def pending(t: FrozenTrial) -> bool:
        return t.state in (TrialState.WAITING, TrialState.RUNNING)

    def covered(lr: float) -> bool:
        return any((kept(t) or pending(t)) and _trial_lr(t) is not None
                   and math.isclose(_trial_lr(t), lr, rel_tol=1e-9) for t in trials)

    if spec.method == "grid":
        for lr in group.lrs:
            if not covered(lr):
                study.enqueue_trial({"lr": lr})
                state.enqueued += 1
        return state
    retry: list[float] = []
    for t in trials:
        lr = _trial_lr(t)
        if t.state == TrialState.FAIL and t.user_attrs.get("outcome") in RETRIED and lr is not None \
                and not covered(lr) and not any(math.isclose(lr, r, rel_tol=1e-9) for r in retry):
            retry.append(lr)
    busy = sum(1 for t in trials if kept(t) or (pending(t) and _trial_lr(t) is not None))
    slots = sum(1 for t in trials if pending(t) and _trial_lr(t) is None)  # empty slots not yet drawn
    for lr in retry:
        study.enqueue_trial({"lr": lr})
    fresh = max(0, spec.n_trials - busy - slots - len(retry))
    for _ in range(fresh):
        study.enqueue_trial({})
    state.enqueued = len(retry) + fresh
    return state


# ------------------------------------------------------------------------------------- searching

@dataclass
class SearchRun:
    storage: str
    states: list[StudyState]
    waiting: int  # trials in the queues after reconciling
    workers: int  # worker jobs started
    submission: Any = None  # suite.launch.Submission
    seconds: float = 0.0
    tracking_uri: str = ""


def search(sweep: Sweep, executor: str = "local", profile: str | Path | None = None,
           workers: int | None = None, only: Sequence[str] = (), tracking_uri: str | None = None,
           folder: str | Path | None = None, progress: Callable[[str], None] | None = None) -> SearchRun:
    """Create or resume the sweep's studies and run K workers until every queue is empty (local,
    debug: blocks; slurm: returns once the job array is queued)."""
    from suite import tracking

    say = progress or (lambda line: None)
    spec = _spec(sweep)
    k = workers or spec.workers
    if k < 1:
        raise ConfigError(f"--workers {k}: expected >= 1")
    groups = plan_groups(sweep, only)
    # before anything is written
    params = launch.preflight(sweep, [c for g in groups for c in g.cells], executor, profile)
    start = time.perf_counter()
    url = storage_url(sweep)
    storage = open_storage(url)
    states = []
    with _locked(url):
        for group in groups:
            study = optuna.create_study(storage=storage, study_name=group.study, direction="minimize",
                                        load_if_exists=True)
            for key, value in dict(sweep=sweep.name, label=group.label, arm=group.arm,
                                   placement=group.template.placement,
                                   placement_args=dict(group.template.placement_args),
                                   size=group.template.size, variant=group.template.variant,
                                   method=spec.method, seed=group.template.seed,
                                   objective="final val loss (val/loss)").items():
                study.set_user_attr(key, value)
            state = reconcile(storage, study, group, spec)
            states.append(state)
            counts = _counts(study)
            say(f"{group.study}: {counts.get('COMPLETE', 0)} complete, "
                f"{counts.get('FAIL', 0) + counts.get('PRUNED', 0)} failed or pruned, "
                f"{counts.get('RUNNING', 0)} running, {counts.get('WAITING', 0)} waiting"
                + (f" ({state.enqueued} enqueued now)" if state.enqueued else "")
                + (f"; trials {state.stale} interrupted" if state.stale else ""))
    waiting = sum(_counts(optuna.load_study(study_name=s.group.study, storage=storage)).get("WAITING", 0)
                  for s in states)
    uri = tracking.store_uri(sweep.out_dir, tracking_uri)
    run = SearchRun(storage=url, states=states, waiting=waiting, workers=min(k, waiting), tracking_uri=uri)
    if waiting == 0:
        run.seconds = time.perf_counter() - start
        return run
    tracking.prepare_store(uri)  # once, before any worker writes
    tracking.Store(uri).experiment_id(sweep.name, tracking.artifact_root(uri, sweep.out_dir))
    root = Path(folder) if folder else Path(sweep.out_dir) / sweep.name / ".submitit"
    job_folder = (root / f"search-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    threads = max(1, (os.cpu_count() or 1) // run.workers) if executor == "local" else None
    sweep_info = dict(name=sweep.name, path=str(Path(sweep.path).resolve()),
                      eval=sweep.eval.to_dict() if sweep.eval.enabled else None)
    spec_info = {**dataclasses.asdict(spec), "lr": list(spec.lr) if spec.lr else None}
    studies = {g.study: [c.to_dict() for c in g.cells] for g in groups}
    jobs = {f"worker{i}": TrialWorker(i, sweep_info, spec_info, studies, url, uri, os.getcwd(),
                                      str(job_folder), executor, threads) for i in range(run.workers)}
    job_params = dict(params)
    if executor == "slurm":
        job_params = launch.resources(groups[0].template, params, str(profile or "profile"))
    say(f"{waiting} trials in the queues: {run.workers} workers ({executor})")
    run.submission = launch.run_jobs(jobs, executor, job_params, job_folder, f"periln-search-{sweep.name}",
                                     parallel=run.workers, progress=say)
    run.seconds = time.perf_counter() - start
    return run


def _counts(study: optuna.Study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


# ----------------------------------------------------------------------------- best lr and seeds

@dataclass(frozen=True)
class Best:
    study: str
    label: str
    lr: float | None  # None: no COMPLETE trial
    val_loss: float | None
    trial: int | None
    complete: int
    failed: int  # FAIL or PRUNED
    pending: int  # WAITING or RUNNING


def _study_names(storage: optuna.storages.BaseStorage, prefix: str | None) -> list[str]:
    names = [s.study_name for s in storage.get_all_studies()]
    return sorted(n for n in names if prefix is None or n.startswith(prefix))


def best_of(study: optuna.Study) -> Best:
    """The chosen lr: the COMPLETE trial with the lowest final val loss (ties: the smaller lr)."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    label = study.user_attrs.get("label") or study.study_name.split("/", 1)[-1]
    counts = dict(complete=len(done),
                  failed=sum(t.state in (TrialState.FAIL, TrialState.PRUNED) for t in trials),
                  pending=sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials))
    if not done:
        return Best(study.study_name, label, None, None, None, **counts)
    best = min(done, key=lambda t: (t.value, t.user_attrs.get("run_lr", t.params["lr"])))
    return Best(study.study_name, label, float(best.user_attrs.get("run_lr", best.params["lr"])),
                float(best.value), best.number, **counts)


def best_lrs(source: Sweep | str) -> dict[str, Best]:
    """The chosen lr of each study, by label: from a sweep's search storage, or a storage given as
    a journal file path or an sqlite:/// URL."""
    if isinstance(source, Sweep):
        storage, prefix = existing_storage(source), f"{source.name}/"
    else:
        url, prefix = (source if "://" in source else f"journal:{Path(source).resolve()}"), None
        if not ("://" in source or Path(source).is_file()):
            raise ConfigError(f"--best-lr-from {source}: no such sweep file or journal file")
        storage = open_storage(url)
    out: dict[str, Best] = {}
    for name in _study_names(storage, prefix):
        best = best_of(optuna.load_study(study_name=name, storage=storage))
        if best.label in out:
            raise ConfigError(f"--best-lr-from {source}: studies of several sweeps name {best.label}; "
                              "give the search's sweep file")
        out[best.label] = best
    return out


def seed_cells(sweep: Sweep, source: Sweep | str, seeds: Sequence[int] | None = None,
               only: Sequence[str] = ()) -> list[RunConfig]:
    """The seed cells at the best lr of each (placement, size): for every group of the sweep's
    cells, `seeds` (default: the group's own seeds) at the chosen lr. A cell of the grid at that lr
    and seed is taken as it is (its overrides included); otherwise the group's cell at that lr (or
    its first) with lr and seed replaced. The cell at the search seed is the trial's own run."""
    best = best_lrs(source)
    where = source.path if isinstance(source, Sweep) else source
    groups: dict[str, list[RunConfig]] = {}
    for cell in sweep.select(list(only)):
        groups.setdefault(cell.group, []).append(cell)
    problems, out = [], []
    for label, cells in groups.items():
        b = best.get(label)
        if b is None:
            problems.append(f"--best-lr-from {where}: no study for {label}; run periln search on it "
                            f"(studies: {', '.join(sorted(best)) or 'none'})")
            continue
        if b.pending:
            problems.append(f"--best-lr-from {where}: the search of {label} is not finished ({b.pending} "
                            f"trials waiting or running); wait, or run periln search again")
            continue
        if b.lr is None:
            problems.append(f"--best-lr-from {where}: {label}: no trial finished ({b.failed} failed or "
                            "pruned: periln search --report lists the reasons)")
            continue
        at_lr = [c for c in cells if math.isclose(c.lr, b.lr, rel_tol=1e-9)]
        template = at_lr[0] if at_lr else cells[0]
        for seed in (seeds if seeds is not None else sorted({c.seed for c in cells})):
            same = [c for c in at_lr if c.seed == seed]
            out.append(same[0] if same else dataclasses.replace(template, lr=b.lr, seed=seed))
    if problems:
        raise ConfigError("\n".join(problems))
    return out


# ------------------------------------------------------------------------------------- reporting

def rows(sweep: Sweep) -> list[dict[str, Any]]:
    """search.csv: one row per trial of every study of the sweep, sorted by study, lr, trial."""
    storage = existing_storage(sweep)
    out = []
    for name in _study_names(storage, f"{sweep.name}/"):
        study = optuna.load_study(study_name=name, storage=storage)
        best = best_of(study)
        ua = study.user_attrs
        args = ";".join(f"{k}={v}" for k, v in sorted((ua.get("placement_args") or {}).items()))
        for t in study.get_trials(deepcopy=False):
            lr = t.user_attrs.get("run_lr", _trial_lr(t))
            out.append(dict(
                sweep=sweep.name, study=name, arm=ua.get("arm", ""), placement=ua.get("placement", ""),
                placement_args=args,
                size=ua.get("size", ""), variant=ua.get("variant", ""), method=ua.get("method", ""),
                trial=t.number, lr=lr, state=t.state.name.lower(),
                val_loss=t.value if t.state == TrialState.COMPLETE else None,
                outcome=t.user_attrs.get("outcome", ""), reason=t.user_attrs.get("reason", ""),
                run_key=t.user_attrs.get("run_key", ""), chosen=int(t.number == best.trial)))
    out.sort(key=lambda r: (r["study"], r["lr"] if r["lr"] is not None else math.inf, r["trial"]))
    return out


def write_csv(table: Sequence[Mapping[str, Any]], path: Path) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in table:
        w.writerow(["" if r[c] is None else f"{r[c]:.6g}" if c == "lr" else f"{r[c]:.6f}"
                    if c == "val_loss" else r[c] for c in CSV_COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, buf.getvalue())


def plot(sweep: Sweep, out_dir: Path) -> list[Path]:
    """Optuna's optimization history and slice (loss vs lr) of each study with a finished trial,
    as PNG: <out_dir>/<label>-history.png, <label>-slice.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    storage = existing_storage(sweep)
    written = []
    for name in _study_names(storage, f"{sweep.name}/"):
        study = optuna.load_study(study_name=name, storage=storage)
        if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
            continue
        label = name.split("/", 1)[1]
        out_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # optuna.visualization.matplotlib is "experimental"
            warnings.simplefilter("ignore")
            for kind, draw in (("history", vis.plot_optimization_history),
                               ("slice", lambda s: vis.plot_slice(s, params=["lr"]))):
                ax = draw(study)
                fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
                fig.suptitle(f"{name} ({kind}; objective: final val loss)", fontsize=9)
                path = out_dir / f"{label}-{kind}.png"
                fig.savefig(path, dpi=110, bbox_inches="tight")
                plt.close(fig)
                written.append(path)
    return written


def report(sweep: Sweep, results: str | Path | None = None,
           figures: bool = True) -> tuple[list[dict], list[Path]]:
    """Write <results>/search.csv (default results/<sweep>/) and the plots under <results>/search/;
    returns the rows and the files written."""
    out_dir = Path(results) if results else Path("results") / sweep.name
    table = rows(sweep)
    written = [write_csv(table, out_dir / "search.csv")]
    if figures:
        written += plot(sweep, out_dir / "search")
    return table, written


EDGE_SHARE = 0.1  # tpe: a best lr in the outer tenth of the log range is at its edge (ours)


def lr_range(study: optuna.Study) -> tuple[float, float] | None:
    """The log range the study's trials drew their lr from (grid: the lowest and highest grid lr)."""
    for t in study.get_trials(deepcopy=False):
        dist = t.distributions.get("lr")
        if dist is not None:
            return float(dist.low), float(dist.high)
    return None


def edge(lr: float, low: float, high: float, method: str) -> str | None:
    """"low" or "high" when `lr` is at that edge of [low, high]: grid, the lowest or highest grid
    lr; tpe, within EDGE_SHARE of the log range from a bound. Else None."""
    if high <= low:
        return None
    if method == "grid":
        return "low" if math.isclose(lr, low, rel_tol=1e-9) else "high" if math.isclose(
            lr, high, rel_tol=1e-9) else None
    share = math.log(lr / low) / math.log(high / low)
    return "low" if share <= EDGE_SHARE else "high" if share >= 1 - EDGE_SHARE else None


def edge_warning(study: optuna.Study, best: Best, method: str) -> str | None:
    """A warning line when the chosen lr is at the edge of the study's range: the best lr may lie
    beyond it, and a placement compared at it is compared at a bound, not at its optimum."""
    span = lr_range(study)
    if best.lr is None or span is None:
        return None
    side = edge(best.lr, *span, method)
    if side is None:
        return None
    knob = "grid.lr" if method == "grid" else "search.lr"
    beyond = "lower" if side == "low" else "higher"
    return (f"warning: {best.label}: best lr {best.lr:g} is at the {side} edge of its search range "
            f"[{span[0]:g}, {span[1]:g}]; the best may be {beyond}: widen {knob} and search again")


def summary(sweep: Sweep) -> list[str]:
    """One line per study: trials by state and the chosen lr; then a warning for each chosen lr at
    the edge of its study's range."""
    storage = existing_storage(sweep)
    lines, edges = [], []
    for name in _study_names(storage, f"{sweep.name}/"):
        study = optuna.load_study(study_name=name, storage=storage)
        b = best_of(study)
        chosen = f"best lr {b.lr:g} (val loss {b.val_loss:.4f}, trial {b.trial})" if b.lr is not None \
            else "no finished trial"
        lines.append(f"{b.label:<36} {b.complete} complete, {b.failed} failed/pruned, {b.pending} pending; "
                     f"{chosen}")
        warning = edge_warning(study, b, _spec(sweep).method)
        if warning:
            edges.append(warning)
    return lines + edges

"""MLflow records: the only module that imports mlflow.

One MLflow experiment per sweep, one MLflow run per run key, ever: the run is created when its
cell is first submitted (status `queued`) and every later attempt (resubmission, requeue after
preemption) reopens it by run id (`open_run`). Tags: sweep, run_key, placement, size, lr, seed,
variant, git_commit, git_dirty, sweep_file, host, executor, job_id (the SLURM job id under SLURM),
checkpoint, status, step, and a search trial's study, trial, search_method; params: the resolved
run config, flattened (`train.max_steps`, ...); metrics: whatever the trainer logs, with steps,
written in batches by a background thread (MlflowMetrics); artifacts: the resolved config
(config.yaml) and, after a failure, the traceback (error.txt).

How it reads in the MLflow UI: `runs_url` is the address of the sweep's runs table (the UI routes
with a hash: `<ui>/#/experiments/<id>/runs`), printed by submit and mlflow-ui. The experiment is
also tagged as classic model development (`mlflow.experimentKind` = `custom_model_development`);
checked in MLflow 3.17.2, that does not change where the bare experiment address opens in a fresh
browser (the GenAI overview: the UI's GenAI / Model training switch is a browser setting).
Each run also gets MLflow's own system metrics (`system/cpu_utilization_percentage`, memory, disk,
network; GPU utilisation and memory when `nvidia-ml-py` (pynvml) is installed) every
`SYSTEM_EVERY_S` seconds while it trains, when psutil is installed and
MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING is not false.

Metric names and the UI's chart sections: the UI groups charts by the name before its last "/" and
sorts the sections alphabetically, so `diag/...` (the probes) comes before `train` (train/loss,
train/grad_norm) and `val` (val/loss). The names stay as they are: figures, claims, records, the
search and `periln status` read them, and renaming losses to sort first would change the CSV
schema for every reader; a section can be collapsed in the UI, and `periln status` / the tables
show the losses first.

The embedded default store is sqlite under the results directory (`<out_dir>/mlflow.db`,
artifacts in `<out_dir>/mlartifacts/`). Several processes creating a brand-new sqlite store at
once corrupt it, so `prepare_store` creates (or upgrades) it once, under a file lock, before any
job starts; writers then retry on sqlite's "database is locked".

Status values (tag `status`): queued, running, interrupted (preempted or timed out: requeued, or
waiting for a resubmission), finished, failed (tag `error`), diverged (train() says so).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from models import ConfigError
from suite.config import setting_changes
from suite.files import file_lock

if TYPE_CHECKING:
    from suite.config import RunConfig

STATUSES = ("queued", "running", "interrupted", "finished", "failed_to_learn", "failed", "diverged")
DONE = ("finished", "failed_to_learn", "diverged")  # ended runs (suite/outcome.py): a resubmission skips them
_MLFLOW_STATUS = {"queued": "SCHEDULED", "running": "RUNNING", "interrupted": "KILLED",
                  "finished": "FINISHED", "failed_to_learn": "FINISHED", "diverged": "FINISHED",
                  "failed": "FAILED"}
# MLflow's limits per log_batch call (mlflow.utils.validation)
_BATCH_METRICS, _BATCH_PARAMS, _BATCH_TAGS = 1000, 100, 100
_TAG_MAX = 5000
# the experiment's kind in MLflow 3 (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, "Machine learning");
# the address that surely opens the runs table is runs_url's (module docstring)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
SYSTEM_PREFIX = "system/"  # MLflow's system metrics (mlflow.system_metrics)
SYSTEM_EVERY_S = 10.0  # seconds between system-metric samples (MLflow's default; ours to keep it)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ store URIs

def store_uri(out_dir: str | Path, explicit: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else sqlite at <out_dir>/mlflow.db (absolute, so
    jobs started in another directory write to the same store)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if "://" not in uri and not uri.startswith("databricks"):  # a bare path: a sqlite file
            return f"sqlite:///{Path(uri).expanduser().resolve()}"
        return uri
    return f"sqlite:///{(Path(out_dir) / 'mlflow.db').resolve()}"


# what MLflow's client can open (a bare path became sqlite in store_uri)
SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")


def redact(uri: str) -> str:
    """`uri` with its password (scheme://user:password@host) shown as ***: every URI this suite
    prints or records goes through here."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def check_store(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with one line, on a store MLflow cannot use: an unknown scheme, or a
    server that does not answer (MLflow's own client retries for minutes before it gives up)."""
    scheme = "databricks" if uri.startswith("databricks") else uri.split("://", 1)[0].split("+")[0]
    if "://" not in uri and scheme != "databricks" or scheme not in SCHEMES:
        raise ConfigError(f"tracking URI {redact(uri)}: unsupported scheme {scheme!r}; use a path or "
                          "sqlite:///PATH (a local file), http(s)://HOST:PORT (an MLflow server) or a "
                          "database URI (postgresql://, mysql://)")
    if scheme not in ("http", "https"):
        return
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    request = urllib.request.Request(urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", "")))
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (an auth proxy's 401, an old server without /health): reachable
    except (urllib.error.URLError, OSError) as err:
        why = getattr(err, "reason", err)
        raise ConfigError(f"MLflow server {redact(uri)} does not answer within {timeout_s:g} s ({why}); "
                          "start it (e.g. `mlflow server --port PORT`) or fix --tracking-uri / "
                          "MLFLOW_TRACKING_URI") from None


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def runs_url(ui: str, experiment_id: str) -> str:
    """The runs table of an experiment in the MLflow UI at `ui` (the UI's hash route)."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs"


def ui_address(uri: str, port: int = 5000) -> str:
    """Where the UI of a store is: a server store is its own UI; a sqlite (or other database) store
    is shown by `periln mlflow-ui` on 127.0.0.1:`port`."""
    return uri if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"


def artifact_root(uri: str, out_dir: str | Path) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite store; a server decides its own."""
    return (Path(out_dir).resolve() / "mlartifacts").as_uri() if _sqlite_path(uri) else None


def prepare_store(uri: str) -> None:
    """Create or upgrade a sqlite store once, before any parallel writer (docs/stack.md: concurrent
    first use corrupts it). Other stores (a server, a database) need nothing here."""
    db = _sqlite_path(uri)
    if db is None:
        return
    with file_lock(db.with_name(db.name + ".lock")):
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except MlflowException as err:
            if "out-of-date database schema" not in str(err):
                raise
            # the documented command, run once here rather than racing in every job
            subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], check=True,
                           stdout=subprocess.DEVNULL)


# ----------------------------------------------------------------------------------- the records

@dataclass
class RunRecord:
    run_id: str
    key: str
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each
    params: dict[str, str] = field(default_factory=dict)

    @property
    def step(self) -> int | None:
        step = self.tags.get("step")
        return int(step) if step and step.isdigit() else None


def _retrying(fn, *args, tries: int = 12, **kwargs):
    """Call an MLflow write, retrying transient failures (sqlite's 'database is locked', a server
    restarting) with exponential backoff (~40 s in all)."""
    delay = 0.05
    for attempt in range(tries):
        try:
            return fn(*args, **kwargs)
        except MlflowException as err:
            if err.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST",
                                  "RESOURCE_ALREADY_EXISTS") or attempt == tries - 1:
                raise
        except Exception:  # sqlalchemy OperationalError, connection errors
            if attempt == tries - 1:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


class Store:
    """The sweep's records in one MLflow tracking store."""

    def __init__(self, uri: str) -> None:
        check_store(uri)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    # experiments and runs
    def experiment_id(self, name: str, artifact_location: str | None = None,
                      create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None and exp.lifecycle_stage == "deleted":
            raise ConfigError(f"MLflow experiment {name!r} in {redact(self.uri)} is deleted; restore it "
                              f"(mlflow experiments restore --experiment-id {exp.experiment_id}) "
                              "or rename the sweep")
        if exp is not None:
            if create and EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tag (or by hand)
                _retrying(self.client.set_experiment_tag, exp.experiment_id, EXPERIMENT_KIND_TAG,
                          EXPERIMENT_KIND)
            return exp.experiment_id
        if not create:
            return None
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created by another submitter meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def runs(self, experiment_id: str | None) -> dict[str, RunRecord]:
        """The sweep's runs by run key (the oldest, should a key ever have two)."""
        if experiment_id is None:
            return {}
        out: dict[str, RunRecord] = {}
        token = None
        while True:
            page = self.client.search_runs([experiment_id], max_results=5000, page_token=token,
                                           order_by=["attributes.start_time DESC"])
            for run in page:
                key = run.data.tags.get("run_key")
                if key is None:
                    continue
                out[key] = RunRecord(run_id=run.info.run_id, key=key,
                                     status=run.data.tags.get("status", "queued"),
                                     tags=dict(run.data.tags), metrics=dict(run.data.metrics),
                                     params=dict(run.data.params))
            token = page.token
            if not token:
                return out

    def create_run(self, experiment_id: str, key: str, params: Mapping[str, str],
                   tags: Mapping[str, str]) -> str:
        run = _retrying(self.client.create_run, experiment_id, run_name=key,
                        tags={**tags, "run_key": key, "status": "queued"})
        run_id = run.info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH_PARAMS):
            _retrying(self.client.log_batch, run_id, params=items[i:i + _BATCH_PARAMS])
        _retrying(self.client.update_run, run_id, status="SCHEDULED")
        return run_id

    def set_tags(self, run_id: str, **tags: Any) -> None:
        items = [RunTag(k, str(v)[:_TAG_MAX]) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), _BATCH_TAGS):
            _retrying(self.client.log_batch, run_id, tags=items[i:i + _BATCH_TAGS])

    def set_status(self, run_id: str, status: str, **tags: Any) -> None:
        """The `status` tag (ours) and MLflow's own run status, together."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        self.set_tags(run_id, status=status, **tags)
        if status == "running":  # a new attempt: an earlier attempt's error no longer describes it
            try:
                self.client.delete_tag(run_id, "error")
            except MlflowException:
                pass  # there was none
        if status in ("queued", "running"):
            _retrying(self.client.update_run, run_id, status=_MLFLOW_STATUS[status])
        else:
            _retrying(self.client.set_terminated, run_id, _MLFLOW_STATUS[status])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(items), _BATCH_METRICS):
            _retrying(self.client.log_batch, run_id, metrics=items[i:i + _BATCH_METRICS])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        _retrying(self.client.log_text, run_id, text, name)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]

    def logger(self, run_id: str, flush_every_s: float = 5.0,
               system_every_s: float | None = SYSTEM_EVERY_S) -> MlflowMetrics:
        return MlflowMetrics(self, run_id, flush_every_s, system_every_s)


def system_metrics_available() -> bool:
    """Whether runs get MLflow's system metrics: psutil installed, and not switched off with
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false."""
    import importlib.util

    off = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0")
    return not off and importlib.util.find_spec("psutil") is not None


def param_conflicts(record: RunRecord, params: Mapping[str, str]) -> list[str]:
    """Identity settings that differ between an existing run and the cell now submitted under its
    key (suite.config.setting_changes: where the run lives may change, what it computes may not)."""
    return setting_changes(record.params, params)


# tags an attempt refreshes on a record that exists already; the others name the run for life
ATTEMPT_TAGS = ("executor", "git_commit", "git_dirty", "study", "trial", "search_method")


def run_tags(cell: RunConfig, sweep_file: str | Path, executor: str, git: tuple[str, bool | None],
             **extra: Any) -> dict[str, Any]:
    """The tags of a sweep cell's record (`extra`: the search's study, trial, search_method)."""
    commit, dirty = git
    # identity as RunConfig composes it (arm, group, depth ...): readers never cut the key apart
    identity = {k: (v or None) for k, v in cell.identity.items() if k != "run_key"}
    return dict(identity, git_commit=commit, git_dirty=dirty, executor=executor,
                sweep_file=str(sweep_file), **extra)


def open_run(store: Store, experiment_id: str, key: str, record: RunRecord | None,
             params: Mapping[str, str], tags: Mapping[str, Any], status: str | None = None) -> str:
    """The run id of `key`'s record, the one way a submission or a search trial opens it: created
    (status queued) with `params` and `tags` when there is none; else reopened with this attempt's
    tags (ATTEMPT_TAGS) refreshed and, given `status`, that status set. Tags that are None are
    not recorded."""
    if record is None:
        return store.create_run(experiment_id, key, params,
                                {k: str(v) for k, v in tags.items() if v is not None})
    attempt = {k: v for k, v in tags.items() if k in ATTEMPT_TAGS}
    if status is None:
        store.set_tags(record.run_id, **attempt)
    else:
        store.set_status(record.run_id, status, **attempt)
    return record.run_id


def export_runs(sweep: str, uri: str) -> list[dict[str, Any]]:
    """The sweep's runs as plain data for suite/records.py (which must not import mlflow), sorted by
    run key: name (the run key), run_id, status, step, tags, params, metrics (latest value of each)
    and history {metric: [(step, value), ...]} (one value per step: the last logged, so a resumed
    run's repeated steps count once). MLflow's system metrics (`system/...`, counted in samples,
    not training steps) stay in MLflow: they are no part of the records' schema."""
    db = _sqlite_path(uri)
    if db is not None and not db.is_file():  # opening it would create an empty store
        raise ConfigError(f"no MLflow store at {db}; submit the sweep first (periln submit), or point "
                          "at its store (its out_dir=..., --tracking-uri) or use --from-csv runs.csv")
    store = Store(uri)
    out = []
    for key, rec in sorted(store.runs(store.experiment_id(sweep, create=False)).items()):
        rec.metrics = {k: v for k, v in rec.metrics.items() if not k.startswith(SYSTEM_PREFIX)}
        history = {}
        for name in sorted(rec.metrics):
            points = sorted(store.client.get_metric_history(rec.run_id, name),
                            key=lambda m: (m.step, m.timestamp))
            history[name] = sorted({m.step: m.value for m in points}.items())
        out.append(dict(name=key, run_id=rec.run_id, status=rec.status, step=rec.step, tags=rec.tags,
                        params=rec.params, metrics=rec.metrics, history=history))
    return out


# ---------------------------------------------------------------------------------- the logger

class MlflowMetrics(Logger):
    """Lightning logger that batches metrics into an MLflow run from a background thread.

    `log_metrics` only appends to a buffer (microseconds); every `flush_every_s` a daemon thread
    writes the buffer with one `log_batch` per 1000 metrics, retrying while the store is busy, and
    puts back what it could not write. `finalize` (end of fit, or an interruption) flushes what is
    left. Params are not logged here: the run got the resolved config when it was created.

    With `system_every_s` (and psutil installed), MLflow's system-metrics monitor samples CPU,
    memory, disk, network (and GPU with pynvml) into the run from the first logged metric, when
    training has started and the run is RUNNING, until `finalize`; its steps continue a resumed
    run's.
    """

    def __init__(self, store: Store, run_id: str, flush_every_s: float = 5.0,
                 system_every_s: float | None = SYSTEM_EVERY_S) -> None:
        super().__init__()
        self.store, self.run_id, self.flush_every_s = store, run_id, flush_every_s
        self.system_every_s = system_every_s
        self._system: Any = None  # mlflow's SystemMetricsMonitor, once started
        self._buffer: list[Metric] = []
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_step: int | None = None
        self.logged = 0  # metrics written so far (tests, overhead measurements)

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved run config is the run's params (Store.create_run)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        step = 0 if step is None else int(step)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "epoch"]
        with self._lock:
            self._buffer.extend(items)
            self._last_step = step
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mlflow-metrics", daemon=True)
            self._thread.start()
            self._start_system_metrics()

    def _start_system_metrics(self) -> None:
        if not self.system_every_s or not system_metrics_available():
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            self._system = SystemMetricsMonitor(self.run_id, sampling_interval=self.system_every_s,
                                                resume_logging=True, tracking_uri=self.store.uri)
            self._system.start()
        except Exception as err:  # noqa: BLE001 -- system metrics are a convenience, never a failure
            log.warning("MLflow system metrics off for this run (%s)", err)
            self._system = None

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            try:
                self.flush()
            except Exception as err:  # the store is away: keep the metrics, try again later
                log.warning("MLflow metrics not written yet (%s); retrying", err)

    def flush(self) -> None:
        with self._flushing:
            with self._lock:
                batch, self._buffer = self._buffer, []
                step = self._last_step
            done = 0
            try:
                while done < len(batch):
                    chunk = batch[done:done + _BATCH_METRICS]
                    tags = [RunTag("step", str(step))] if step is not None and done == 0 else []
                    _retrying(self.store.client.log_batch, self.run_id, metrics=chunk, tags=tags)
                    done += len(chunk)
                    self.logged += len(chunk)
            finally:
                if done < len(batch):
                    with self._lock:  # not lost: written at the next flush
                        self._buffer = batch[done:] + self._buffer

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._system is not None:
            self._system.finish()
            self._system = None
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        self.flush()

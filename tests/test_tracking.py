"""MLflow records (suite/tracking.py) against a real sqlite store: the store is created once even
when several processes start together, metrics are batched without loss (also while the database
is locked by another writer), statuses map to MLflow's."""

import multiprocessing as mp
import sqlite3
import threading
import time

import pytest

from suite import tracking
from suite.config import flatten


@pytest.fixture(scope="module")
def store(tmp_path_factory):  # one store (creating one takes seconds); each test its own experiment
    uri = tracking.store_uri(tmp_path_factory.mktemp("runs"))
    tracking.prepare_store(uri)
    return tracking.Store(uri)


def test_store_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.store_uri(tmp_path / "r") == f"sqlite:///{tmp_path}/r/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.store_uri(tmp_path / "r") == "http://127.0.0.1:5999"
    assert tracking.store_uri(tmp_path / "r", "sqlite:////x/y.db") == "sqlite:////x/y.db"
    assert tracking.store_uri(tmp_path / "r", str(tmp_path / "z.db")) == f"sqlite:///{tmp_path}/z.db"
    assert tracking.artifact_root("http://h:1", tmp_path) is None
    assert tracking.artifact_root("sqlite:////a.db", tmp_path) == (tmp_path / "mlartifacts").as_uri()


def _prepare_and_write(uri, i, barrier):
    from suite import tracking as t

    barrier.wait()  # all start at once on a store that does not exist yet
    t.prepare_store(uri)
    store = t.Store(uri)
    exp = store.experiment_id("race", None)
    run_id = store.create_run(exp, f"k{i}", {"i": str(i)}, {})
    store.log_metrics(run_id, {"m": float(i)}, step=1)


def test_concurrent_first_use_creates_the_store_once(tmp_path):
    uri = tracking.store_uri(tmp_path)
    ctx = mp.get_context("fork")  # children start with everything imported: seconds, not a minute
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_prepare_and_write, args=(uri, i, barrier)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    store = tracking.Store(uri)
    runs = store.runs(store.experiment_id("race", create=False))
    assert sorted(runs) == ["k0", "k1", "k2"]
    assert {r.metrics["m"] for r in runs.values()} == {0.0, 1.0, 2.0}


def test_run_record_params_tags_and_status(store):
    exp = store.experiment_id("sweep-a", None)
    params = flatten({"lr": 0.001, "train": {"max_steps": 10, "precision": "32"},
                               "placement_args": {}, "model": {"qk_norm": True}})
    assert params == {"lr": "0.001", "train.max_steps": "10", "train.precision": "32",
                      "placement_args": "{}", "model.qk_norm": "True"}
    run_id = store.create_run(exp, "pre_ln-tiny-lr0.001-s0", params, {"placement": "pre_ln"})
    rec = store.runs(exp)["pre_ln-tiny-lr0.001-s0"]
    assert (rec.run_id, rec.status, rec.params) == (run_id, "queued", params)
    assert rec.tags["placement"] == "pre_ln" and rec.tags["mlflow.runName"] == "pre_ln-tiny-lr0.001-s0"
    assert store.client.get_run(run_id).info.status == "SCHEDULED"
    for status, mlflow_status in [("running", "RUNNING"), ("interrupted", "KILLED"), ("running", "RUNNING"),
                                  ("diverged", "FINISHED"), ("failed", "FAILED"), ("finished", "FINISHED")]:
        store.set_status(run_id, status, step=7)
        run = store.client.get_run(run_id)
        assert (run.data.tags["status"], run.info.status) == (status, mlflow_status)
    assert store.runs(exp)["pre_ln-tiny-lr0.001-s0"].step == 7
    store.set_status(run_id, "failed", error="ConfigError: bad path")
    assert store.client.get_run(run_id).data.tags["error"] == "ConfigError: bad path"
    store.set_status(run_id, "running")  # the next attempt: the old error goes
    assert "error" not in store.client.get_run(run_id).data.tags
    changed = dict(params, **{"train.max_steps": "20"})
    assert tracking.param_conflicts(rec, changed) == ["train.max_steps: recorded '10', now '20'"]
    with pytest.raises(ValueError, match="status 'done'"):
        store.set_status(run_id, "done")


def test_open_run_creates_once_then_refreshes_only_the_attempts_tags(store):
    from suite.config import load_run_config

    cell = load_run_config(None, ["placement=peri_ln", "size=tiny", "lr=0.002", "seed=3", "sweep=open"])
    exp = store.experiment_id("open-run", None)
    first = tracking.run_tags(cell, "/sweeps/a.yaml", "local", ("abc123", None))
    run_id = tracking.open_run(store, exp, cell.key, None, {"lr": "0.002"}, first)
    rec = store.runs(exp)[cell.key]
    assert (rec.run_id, rec.status, rec.params) == (run_id, "queued", {"lr": "0.002"})
    named = ("sweep", "run_key", "placement", "size", "lr", "seed", "git_commit", "executor", "sweep_file")
    assert {k: rec.tags[k] for k in named} == dict(
        sweep="open", run_key="peri_ln-tiny-lr0.002-s3", placement="peri_ln", size="tiny", lr="0.002",
        seed="3", git_commit="abc123", executor="local", sweep_file="/sweeps/a.yaml")
    assert "variant" not in rec.tags and "git_dirty" not in rec.tags  # None: not recorded
    store.set_status(run_id, "interrupted")

    # a search trial reopens it: the attempt's tags change, the run's identity does not
    again = tracking.run_tags(cell, "/sweeps/b.yaml", "slurm", ("def456", True), study="open/peri_ln-tiny",
                              trial=4, search_method="grid")
    assert tracking.open_run(store, exp, cell.key, rec, {"lr": "0.002"}, again, status="queued") == run_id
    rec = store.runs(exp)[cell.key]
    assert len(store.runs(exp)) == 1 and rec.status == "queued"
    assert {k: rec.tags[k] for k in ("executor", "git_commit", "git_dirty", "study", "trial",
                                     "search_method", "sweep_file")} == dict(
        executor="slurm", git_commit="def456", git_dirty="True", study="open/peri_ln-tiny", trial="4",
        search_method="grid", sweep_file="/sweeps/a.yaml")
    assert store.client.get_run(run_id).info.status == "SCHEDULED"


def test_metrics_batched_in_the_background_lose_nothing(store):
    exp = store.experiment_id("sweep-b", None)
    run_id = store.create_run(exp, "k", {}, {})
    logger = store.logger(run_id, flush_every_s=0.2)
    for step in range(1200):  # 2400 metrics: more than one log_batch (1000 each)
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "train/grad_norm": float(step), "epoch": 0}, step)
    deadline = time.time() + 30
    while logger.logged == 0 and time.time() < deadline:  # the thread writes before finalize
        time.sleep(0.05)
    assert logger.logged > 0
    logger.finalize("success")
    assert logger.logged == 2400  # "epoch" is Lightning's bookkeeping, not a metric of ours
    hist = store.metric_history(run_id, "train/loss")
    assert sorted(s for s, _ in hist) == list(range(1200))
    assert dict(hist)[999] == pytest.approx(1 / 1000)
    assert len(store.metric_history(run_id, "train/grad_norm")) == 1200
    assert store.runs(exp)["k"].step == 1199


def test_a_locked_database_delays_metrics_but_loses_none(store):
    exp = store.experiment_id("sweep-c", None)
    run_id = store.create_run(exp, "k", {}, {})
    logger = store.logger(run_id, flush_every_s=3600)
    for step in range(50):
        logger.log_metrics({"m": float(step)}, step)
    db = sqlite3.connect(store.uri.removeprefix("sqlite:///"), isolation_level=None,
                         check_same_thread=False)
    db.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    released = threading.Timer(8.0, lambda: db.execute("COMMIT"))
    released.start()
    start = time.perf_counter()
    logger.finalize("success")  # sqlite's own 5 s busy timeout, then our retries
    assert time.perf_counter() - start >= 7.0
    released.join()
    db.close()
    assert [s for s, _ in store.metric_history(run_id, "m")] == list(range(50))


def test_a_sweeps_experiment_opens_on_the_runs_table(store):
    exp = store.experiment_id("kind-new", None)
    tags = store.client.get_experiment(exp).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow 3 UI: runs table
    # an experiment made before the tag (or by hand) gets it the next time a submission opens it
    old = store.client.create_experiment("kind-old")
    assert "mlflow.experimentKind" not in store.client.get_experiment(old).tags
    assert store.experiment_id("kind-old", create=False) == old  # reading alone changes nothing
    assert "mlflow.experimentKind" not in store.client.get_experiment(old).tags
    assert store.experiment_id("kind-old", None) == old
    assert store.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    # a kind someone chose in the UI is kept
    store.client.set_experiment_tag(old, "mlflow.experimentKind", "genai_development")
    store.experiment_id("kind-old", None)
    assert store.client.get_experiment(old).tags["mlflow.experimentKind"] == "genai_development"


def test_runs_url_is_the_uis_hash_route_to_the_runs_table():
    assert tracking.runs_url("http://127.0.0.1:5000", "7") == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert tracking.runs_url("https://mlflow.lab/", "12") == "https://mlflow.lab/#/experiments/12/runs"
    assert tracking.ui_address("sqlite:////x/mlflow.db", 5001) == "http://127.0.0.1:5001"
    assert tracking.ui_address("http://tracker:5000") == "http://tracker:5000"


def test_system_metrics_are_logged_while_a_run_trains(store):
    pytest.importorskip("psutil")  # installed here (a dependency of the stack); off without it
    exp = store.experiment_id("system", None)
    run_id = store.create_run(exp, "k", {}, {})
    store.set_status(run_id, "running")  # the monitor samples while the run is RUNNING
    logger = store.logger(run_id, flush_every_s=0.2, system_every_s=0.2)
    logger.log_metrics({"train/loss": 1.0}, 0)
    time.sleep(1.5)
    logger.finalize("success")
    names = set(store.client.get_run(run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= names
    assert len(store.metric_history(run_id, "system/cpu_utilization_percentage")) >= 2
    # ... and stay out of the records' schema (suite/records.py)
    exported = tracking.export_runs("system", store.uri)[0]
    assert set(exported["metrics"]) == {"train/loss"} and set(exported["history"]) == {"train/loss"}


def test_system_metrics_can_be_switched_off(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    assert not tracking.system_metrics_available()
    exp = store.experiment_id("system-off", None)
    run_id = store.create_run(exp, "k", {}, {})
    store.set_status(run_id, "running")
    logger = store.logger(run_id, flush_every_s=0.2, system_every_s=0.2)
    logger.log_metrics({"train/loss": 1.0}, 0)
    time.sleep(0.6)
    logger.finalize("success")
    assert set(store.client.get_run(run_id).data.metrics) == {"train/loss"}

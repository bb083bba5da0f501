"""Learning-rate search (suite/search.py): exact grid coverage with parallel workers on journal
storage, diverged trials failed with their reason, an interrupted search resumes without redoing
finished trials, and the best-LR handoff builds the seed cells."""

import csv
import dataclasses
import json
import math
import multiprocessing
import time

import optuna
import pytest
from optuna.trial import TrialState

from models import ConfigError
from suite import launch, search, tracking
from suite.cli import main
from suite.sweep import sweep_from_dict
from suite.train import Interrupted

try:  # the session fixture that starts the single-node cluster of slurm/start-cluster.sh
    from test_slurm import PROFILE, TIMEOUT_S, slurm_cluster  # noqa: F401
except ImportError:  # pragma: no cover
    slurm_cluster = None

GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]



def tiny_sweep(tmp_path, search_spec=None, lrs=(1e-3, 3e-3, 1e-2), overrides=None, seeds=(0,),
               placements=("pre_ln",)):
    """A sweep of tiny runs (8 steps, val loss at 4 and 8), all files under tmp_path."""
    return sweep_from_dict({
        "name": "srch",
        "base": {"size": "tiny", "out_dir": str(tmp_path / "runs"),
                 "data": {"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 300},
                 "train": {"seq_len": 32, "batch_size": 4, "max_steps": 8, "val_every": 4,
                           "val_batches": 1, "log_every": 2, "ckpt_every": 4, "progress_bar": False}},
        "grid": {"placement": list(placements), "lr": list(lrs), "seed": list(seeds)},
        "overrides": overrides or [],
        "search": search_spec or {"method": "grid", "workers": 2},
    }, str(tmp_path / "srch.yaml"))


# ------------------------------------------------------------------ exact coverage, 4 processes

def _cheap_worker(url, names, start, counts):
    """A worker process: the real loop (suite.search.work) with a cheap objective."""
    storage = search.open_storage(url)
    start.wait()

    def run(study, trial):
        lr = trial.suggest_float("lr", GRID[0], GRID[-1], log=True)
        time.sleep(0.01)
        return search.Outcome("finished", value=(math.log10(lr) + 2.5) ** 2)

    done = search.work(storage, names, run)
    counts.put(len(done))


def test_grid_runs_every_point_exactly_once_with_four_parallel_workers(tmp_path):
    url = f"journal:{tmp_path / 'optuna.journal'}"
    storage = search.open_storage(url)
    names = ["s/pre_ln-tiny", "s/peri_ln-tiny"]
    for name in names:
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
        for lr in GRID:
            study.enqueue_trial({"lr": lr})
    ctx = multiprocessing.get_context("fork")  # the children only touch optuna and the journal
    start, counts = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_cheap_worker, args=(url, names, start, counts)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()  # all four pop at once: the contended case
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    per_worker = [counts.get(timeout=5) for _ in procs]
    assert sum(per_worker) == 2 * len(GRID)

    for name in names:
        trials = optuna.load_study(study_name=name, storage=search.open_storage(url)).trials
        assert len(trials) == len(GRID)  # no duplicate, no extra sampled trial
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert sorted(t.params["lr"] for t in trials) == GRID
        best = min(trials, key=lambda t: t.value)
        assert best.params["lr"] == 3e-3  # (log10 lr + 2.5)^2 is smallest at 10^-2.5 = 3.16e-3
        assert {t.user_attrs["worker"]["pid"] for t in trials} <= {p.pid for p in procs}


def test_tpe_runs_exactly_n_trials_in_range_and_retries_interrupted_ones(tmp_path):
    sweep = tiny_sweep(tmp_path, {"method": "tpe", "lr": [1e-4, 1e-1], "n_trials": 5,
                                  "startup_trials": 2})
    group = search.plan_groups(sweep)[0]
    storage = search.open_storage(search.storage_url(sweep))
    study = optuna.create_study(storage=storage, study_name=group.study, direction="minimize")
    spec = sweep.search
    assert search.reconcile(storage, study, group, spec).enqueued == 5

    def run(study, trial):
        lr = trial.suggest_float("lr", *search.distribution(spec, group), log=True)
        trial.set_user_attr("run_lr", search.run_lr(spec, lr))
        if trial.number == 1:
            raise SystemExit("killed")  # a worker killed mid-trial leaves it RUNNING
        return search.Outcome("finished", value=abs(math.log10(lr) + 2))

    def make(name, number):
        return optuna.load_study(study_name=name, storage=storage, sampler=search._sampler(spec, number))

    with pytest.raises(SystemExit):
        search.work(storage, [group.study], run, make)
    state = search.reconcile(storage, study, group, spec)  # trial 1's worker (this process) is gone
    assert state.stale == [1] and state.enqueued == 1  # its lr again, nothing more
    search.work(storage, [group.study], run, make)
    trials = study.get_trials()
    assert len(trials) == 6  # 5 slots + the retry of the interrupted one
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["outcome"] == "interrupted"
    assert trials[5].params["lr"] == trials[1].params["lr"]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5
    assert all(1e-4 <= t.params["lr"] <= 1e-1 for t in complete)
    # the run uses the draw at 3 significant digits, which the run key names
    for t in complete:
        assert t.user_attrs["run_lr"] == float(f"{t.params['lr']:.3g}")
    assert search.reconcile(storage, study, group, spec).enqueued == 0  # budget spent


# ------------------------------------------------------------------- real training, debug executor

def test_search_trains_each_lr_once_and_fails_the_diverged_one_with_its_reason(tmp_path, one_thread):
    # the lr=1e-2 cell gets a divergence threshold no loss meets: it diverges after 2 steps
    diverge = [{"when": {"lr": 1e-2}, "set": {"diagnostics.diverge_loss": 0.5,
                                               "diagnostics.diverge_patience": 2,
                                               "diagnostics.check_every": 1}}]
    sweep = tiny_sweep(tmp_path, overrides=diverge)
    ran = search.search(sweep, "debug", folder=tmp_path / "submitit")
    assert ran.workers == 2 and not ran.submission.errors
    table, files = search.report(sweep, tmp_path / "results")

    storage = search.open_storage(search.storage_url(sweep))
    trials = optuna.load_study(study_name="srch/pre_ln-tiny", storage=storage).trials
    by_lr = {t.params["lr"]: t for t in trials}
    assert sorted(by_lr) == [1e-3, 3e-3, 1e-2] and len(trials) == 3
    diverged = by_lr[1e-2]
    assert diverged.state == TrialState.FAIL and diverged.value is None  # never a silent number
    assert diverged.user_attrs["outcome"] == "diverged"
    assert "loss above 0.5 for 2 steps" in diverged.user_attrs["reason"]
    for lr in (1e-3, 3e-3):
        run_dir = tmp_path / "runs" / "srch" / f"pre_ln-tiny-lr{lr:g}-s0"
        result = json.loads((run_dir / "result.json").read_text())
        assert by_lr[lr].state == TrialState.COMPLETE and by_lr[lr].value == result["val_loss"]
        assert sorted(by_lr[lr].intermediate_values) == [4, 8]  # val loss at each validation

    # every trial is an MLflow run linked by tags
    store = tracking.Store(ran.tracking_uri)
    records = store.runs(store.experiment_id("srch", create=False))
    for t in trials:
        rec = records[t.user_attrs["run_key"]]
        assert rec.tags["study"] == "srch/pre_ln-tiny" and rec.tags["trial"] == str(t.number)
        assert rec.run_id == t.user_attrs["mlflow_run_id"]
    assert records["pre_ln-tiny-lr0.01-s0"].status == "diverged"

    # search.csv: the loss-vs-lr curve and the chosen lr, for the tables
    with open(tmp_path / "results" / "search.csv") as fh:
        written = list(csv.DictReader(fh))
    assert [r["lr"] for r in written] == ["0.001", "0.003", "0.01"]
    assert [r["state"] for r in written] == ["complete", "complete", "fail"]
    best = min((1e-3, 3e-3), key=lambda lr: by_lr[lr].value)
    assert [r["chosen"] for r in written] == ["1" if lr == best else "0" for lr in (1e-3, 3e-3)] + ["0"]
    assert written[2]["val_loss"] == "" and "loss above" in written[2]["reason"]
    assert {p.name for p in files if p.suffix == ".png"} == {"pre_ln-tiny-history.png",
                                                              "pre_ln-tiny-slice.png"}

    # the handoff: seeds 0..2 at the best lr; seed 0 is the trial's own, finished run
    seeds = search.seed_cells(sweep, sweep, [0, 1, 2])
    assert [c.key for c in seeds] == [f"pre_ln-tiny-lr{best:g}-s{s}" for s in (0, 1, 2)]
    sub = launch.submit(dataclasses.replace(sweep, cells=tuple(seeds)), "debug", dry_run=True)
    assert sub.plan.skip == {f"pre_ln-tiny-lr{best:g}-s0": "finished"}
    assert [c.key for c in sub.plan.submit] == [f"pre_ln-tiny-lr{best:g}-s{s}" for s in (1, 2)]


def test_interrupted_search_resumes_without_redoing_finished_trials(tmp_path, monkeypatch, one_thread):
    sweep = tiny_sweep(tmp_path, {"method": "grid", "workers": 1})
    import suite.train

    real_train, calls, kill = suite.train.train, [], [2]

    def killed_on_second(cfg, *args, **kwargs):
        calls.append(cfg.key)
        if len(calls) in kill:
            raise Interrupted(3)  # what SIGTERM leaves behind: the trial RUNNING
        return real_train(cfg, *args, **kwargs)

    monkeypatch.setattr(suite.train, "train", killed_on_second)
    with pytest.raises(SystemExit, match="stopped at step 3"):
        search.search(sweep, "debug", folder=tmp_path / "submitit1")
    first = tmp_path / "runs" / "srch" / f"{calls[0]}" / "result.json"
    stamp = first.stat().st_mtime_ns
    storage = search.open_storage(search.storage_url(sweep))
    study = optuna.load_study(study_name="srch/pre_ln-tiny", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING,
                                               TrialState.WAITING]

    calls.clear()
    kill.clear()
    ran = search.search(sweep, "debug", folder=tmp_path / "submitit2")
    assert ran.states[0].stale == [1] and ran.states[0].enqueued == 1
    assert len(calls) == 2 and calls[0] != first.parent.name  # only the two unfinished lrs trained
    assert first.stat().st_mtime_ns == stamp
    trials = optuna.load_study(study_name="srch/pre_ln-tiny", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert trials[1].user_attrs["outcome"] == "interrupted"
    assert trials[3].params["lr"] == trials[1].params["lr"]
    complete = sorted(t.params["lr"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == [1e-3, 3e-3, 1e-2]  # each grid point once

    calls.clear()  # a third call: everything has ended, nothing runs
    assert search.search(sweep, "debug", folder=tmp_path / "submitit3").workers == 0 and not calls


# ------------------------------------------------------------------------------ the handoff

def test_best_lr_handoff_builds_the_seed_cells(tmp_path, capsys):
    lrs = (1e-3, 3e-3, 1e-2)
    bump = [{"when": {"placement": "peri_ln", "lr": 3e-3}, "set": {"train.grad_clip": 0.5}}]
    sweep = tiny_sweep(tmp_path, lrs=lrs, overrides=bump, seeds=(0, 1),
                       placements=("pre_ln", "peri_ln"))
    storage = search.open_storage(search.storage_url(sweep))
    losses = {"pre_ln-tiny": {1e-3: 3.1, 3e-3: 2.9, 1e-2: None},  # 1e-2 diverged
              "peri_ln-tiny": {1e-3: 3.0, 3e-3: 2.8, 1e-2: 2.8}}  # a tie: the smaller lr
    for label, values in losses.items():
        study = optuna.create_study(storage=storage, study_name=f"srch/{label}", direction="minimize")
        study.set_user_attr("label", label)
        for lr, value in values.items():  # the trials as a worker leaves them
            study.add_trial(optuna.trial.create_trial(
                params={"lr": lr}, distributions={"lr": optuna.distributions.FloatDistribution(
                    1e-3, 1e-2, log=True)}, user_attrs={"run_lr": lr},
                value=value, state=TrialState.COMPLETE if value is not None else TrialState.FAIL))

    best = search.best_lrs(sweep)
    assert (best["pre_ln-tiny"].lr, best["pre_ln-tiny"].val_loss) == (3e-3, 2.9)
    assert best["peri_ln-tiny"].lr == 3e-3  # 2.8 at 3e-3 and 1e-2: the smaller lr

    cells = search.seed_cells(sweep, sweep, [0, 1, 2])
    assert [c.key for c in cells] == [f"{p}-tiny-lr0.003-s{s}" for p in ("pre_ln", "peri_ln")
                                      for s in (0, 1, 2)]
    peri = [c for c in cells if c.placement == "peri_ln"]
    assert all(c.train.grad_clip == 0.5 for c in peri)  # the grid's override at that lr, kept for s2 too
    assert all(c.train.grad_clip == 1.0 for c in cells if c.placement == "pre_ln")
    assert [c.key for c in search.seed_cells(sweep, sweep)] == [  # default: the sweep's seeds
        f"{p}-tiny-lr0.003-s{s}" for p in ("pre_ln", "peri_ln") for s in (0, 1)]

    # the CLI: the same cells, planned by submit
    path = tmp_path / "srch.yaml"
    import yaml

    path.write_text(yaml.safe_dump({
        "name": "srch", "base": {"size": "tiny", "out_dir": str(tmp_path / "runs")},
        "grid": {"placement": ["pre_ln", "peri_ln"], "lr": list(lrs), "seed": [0, 1]},
        "overrides": bump, "search": {"method": "grid"}}))
    assert main(["submit", str(path), "--executor", "debug", "--dry-run", "--best-lr-from",
                 "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "would submit 6 cells" in out and "pre_ln-tiny-lr0.003-s2" in out and "lr0.01" not in out

    # an unfinished or missing study is an error, never a guess
    study = optuna.load_study(study_name="srch/pre_ln-tiny", storage=storage)
    study.enqueue_trial({"lr": 1e-2})
    with pytest.raises(ConfigError, match="pre_ln-tiny is not finished"):
        search.seed_cells(sweep, sweep, [0])
    other = tiny_sweep(tmp_path, placements=("post_ln",))
    with pytest.raises(ConfigError, match="no study for post_ln-tiny"):
        search.seed_cells(other, sweep, [0])


def test_search_checks_what_submit_checks_before_writing_anything(tmp_path):
    sweep = tiny_sweep(tmp_path)
    with pytest.raises(ConfigError, match=r"^--executor 'slrum': unknown; did you mean 'slurm'\?"):
        search.search(sweep, "slrum")
    two = tiny_sweep(tmp_path, overrides=[{"set": {"train.devices": 2}}])
    for run in (lambda: search.search(two, "local"), lambda: launch.submit(two, "local")):
        with pytest.raises(ConfigError, match=r"srch.yaml: pre_ln-tiny-lr0.001-s0: train.devices x "
                                              r"train.num_nodes = 2 processes need --executor slurm"):
            run()
    assert not (tmp_path / "runs").exists()  # no storage, no MLflow store


def test_search_section_is_validated_with_one_line_per_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        tiny_sweep(tmp_path, {"method": "tpe", "wokers": 2, "pruning": "yes"})
    lines = str(err.value).splitlines()
    assert any("search.wokers: unknown key; did you mean 'workers'?" in ln for ln in lines)
    assert any("search.pruning: expected true or false" in ln for ln in lines)
    with pytest.raises(ConfigError, match=r"search.lr: method tpe needs a range"):
        tiny_sweep(tmp_path, {"method": "tpe", "n_trials": 4})
    with pytest.raises(ConfigError, match=r"search.lr: only for method tpe"):
        tiny_sweep(tmp_path, {"lr": [1e-4, 1e-2]})
    spec = tiny_sweep(tmp_path, {"method": "tpe", "lr": ["1e-4", "1e-2"], "n_trials": "6"}).search
    assert (spec.lr, spec.n_trials) == ((1e-4, 1e-2), 6)  # YAML 1.1 strings coerced
    with pytest.raises(ConfigError, match="needs at least two"):
        search.plan_groups(tiny_sweep(tmp_path, lrs=(1e-3,)))
    with pytest.raises(ConfigError, match="no search: section"):
        search.plan_groups(sweep_from_dict({"name": "x", "grid": {"lr": [1e-3, 2e-3]}}, "x.yaml"))


# ---------------------------------------------------------------------------------------- SLURM

@pytest.mark.slurm
@pytest.mark.slow
def test_search_on_slurm_two_workers_in_one_job_array_then_seeds(slurm_cluster, tmp_path):
    sweep = tiny_sweep(tmp_path, {"method": "grid", "workers": 2})
    ran = search.search(sweep, "slurm", PROFILE, folder=tmp_path / "submitit")
    jobs = sorted(ran.submission.job_ids.values())
    assert len(jobs) == 2 and {j.split("_")[0] for j in jobs} == {jobs[0].split("_")[0]}  # one array
    assert set(launch.wait(ran.submission, timeout_s=TIMEOUT_S).values()) == {"COMPLETED"}
    storage = search.open_storage(search.storage_url(sweep))
    trials = optuna.load_study(study_name="srch/pre_ln-tiny", storage=storage).trials
    assert sorted(t.params["lr"] for t in trials) == [1e-3, 3e-3, 1e-2]  # each once
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["worker"]["job_id"] for t in trials} <= set(jobs)

    best = search.best_lrs(sweep)["pre_ln-tiny"].lr
    seeds = search.seed_cells(sweep, sweep, [0, 1])
    sub = launch.submit(dataclasses.replace(sweep, cells=tuple(seeds)), "slurm", PROFILE,
                        folder=tmp_path / "submitit-seeds")
    assert list(sub.plan.skip) == [f"pre_ln-tiny-lr{best:g}-s0"]  # the trial's own run
    assert [c.key for c in sub.plan.submit] == [f"pre_ln-tiny-lr{best:g}-s1"]
    assert set(launch.wait(sub, timeout_s=TIMEOUT_S).values()) == {"COMPLETED"}


# ------------------------------------------------------------- a best lr at the edge of its range

def _study_with(storage, name, method_range, results):
    """A study as the search leaves it: COMPLETE trials at `results` {lr: val loss}, drawn from the
    log range `method_range` (grid: its lowest and highest lr)."""
    study = optuna.create_study(study_name=name, storage=storage)
    dist = optuna.distributions.FloatDistribution(*method_range, log=True)
    for lr, loss in results.items():
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions={"lr": dist},
                                                  value=loss, user_attrs={"run_lr": lr}))
    return study


def test_edge_rule_by_hand():
    assert search.edge(1e-3, 1e-3, 1e-2, "grid") == "low" and search.edge(1e-2, 1e-3, 1e-2, "grid") == "high"
    assert search.edge(3e-3, 1e-3, 1e-2, "grid") is None
    # tpe over [1e-4, 1e-2] (two decades): the outer tenth is 0.2 decades from either bound
    assert search.edge(1.5e-4, 1e-4, 1e-2, "tpe") == "low"  # 0.18 decades up
    assert search.edge(1.7e-4, 1e-4, 1e-2, "tpe") is None  # 0.23 decades up
    assert search.edge(6.5e-3, 1e-4, 1e-2, "tpe") == "high" and search.edge(5e-3, 1e-4, 1e-2, "tpe") is None


def test_search_summary_warns_when_a_best_lr_is_at_the_edge_of_its_range(tmp_path):
    sweep = tiny_sweep(tmp_path, {"method": "grid", "storage": "sqlite"}, placements=("pre_ln", "peri_ln"))
    storage = search.open_storage(search.storage_url(sweep))
    grid = (1e-3, 1e-2)
    _study_with(storage, "srch/pre_ln-tiny", grid, {1e-3: 3.0, 3e-3: 2.5, 1e-2: 2.9})  # inside
    _study_with(storage, "srch/peri_ln-tiny", grid, {1e-3: 3.0, 3e-3: 2.8, 1e-2: 2.6})  # the top lr
    lines = search.summary(sweep)
    assert [line for line in lines if line.startswith("warning:")] == [
        "warning: peri_ln-tiny: best lr 0.01 is at the high edge of its search range [0.001, 0.01]; "
        "the best may be higher: widen grid.lr and search again"]
    assert "best lr 0.003" in next(line for line in lines if line.startswith("pre_ln-tiny"))

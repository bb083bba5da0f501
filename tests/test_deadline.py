"""`periln submit --deadline`: the local executor launches no cell that cannot end in time (real
submitit local subprocesses; the jobs sleep, so the timing is known)."""

import os
import time
from pathlib import Path

import pytest

from suite.launch import Plan, Submission, _run_local


@pytest.fixture(autouse=True)
def importable_here(monkeypatch):
    # the local executor's subprocesses unpickle Sleeper: they must find this module
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))


class Sleeper:
    """A picklable job that takes `seconds` and reports finished."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> dict:
        time.sleep(self.seconds)
        return {"status": "finished"}


def test_cells_that_cannot_end_before_the_deadline_are_not_started(tmp_path):
    sub = Submission(plan=Plan(), executor="local", folder=tmp_path)
    jobs = {f"c{i}": Sleeper(2.0) for i in range(4)}
    lines = []
    # one at a time, 4 s: the first cell starts (nothing is known yet) and takes > 2 s; then each
    # remaining cell needs > 2 s with < 2 s left
    _run_local(sub, jobs, {}, 1, lines.append, deadline_s=4.0, flops={k: 1.0 for k in jobs})
    assert list(sub.results) == ["c0"]
    assert sorted(sub.not_started) == ["c1", "c2", "c3"]
    assert all("not started" in line for line in lines[1:])


def test_without_a_deadline_every_cell_runs(tmp_path):
    sub = Submission(plan=Plan(), executor="local", folder=tmp_path)
    jobs = {f"c{i}": Sleeper(0.1) for i in range(3)}
    _run_local(sub, jobs, {}, 3, lambda line: None)
    assert sorted(sub.results) == ["c0", "c1", "c2"] and not sub.not_started

"""data.num_workers: unset, 0 loader processes on CPU and 2 (ours) on a CUDA GPU; a set value wins."""

from suite.config import load_run_config
from suite.data import loader_workers


def test_default_workers_follow_the_runs_accelerator():
    assert load_run_config(None, []).data.num_workers is None
    assert loader_workers(load_run_config(None, ["train.accelerator=cpu"])) == 0
    # on_cuda answers from the accelerator setting, so the GPU default is checked without a GPU
    assert loader_workers(load_run_config(None, ["train.accelerator=cuda"])) == 2
    assert loader_workers(load_run_config(None, ["train.accelerator=cuda", "data.num_workers=0"])) == 0
    assert loader_workers(load_run_config(None, ["train.accelerator=cpu", "data.num_workers=3"])) == 3

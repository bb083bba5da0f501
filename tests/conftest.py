import os

import pytest
import torch

# Tests never reach a hub; each test isolates its caches under tmp_path.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread; on a busy 2-core machine two threads
    spin-wait for each other (a 20-s run took minutes). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def run_overrides(tmp_path):
    """Overrides that keep a training run tiny and all its files under tmp_path."""
    return [f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'runs'}",
            "train.progress_bar=false", "train.seq_len=64", "train.batch_size=8",
            "data.synthetic_docs=3000"]

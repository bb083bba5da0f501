"""suite/files.py: the file lock excludes another process, atomic writes leave the old content or
the new (never a temporary file), and the did-you-mean hint."""

import subprocess
import sys
import threading

import pytest

from suite.files import atomic_write_bytes, atomic_write_text, file_lock, suggest

# exits 0 if it takes the lock at once, 1 if another holder has it
TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as fh:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(1)
"""


def try_lock(path):
    return subprocess.run([sys.executable, "-c", TRY_LOCK, str(path)], timeout=60).returncode


def test_file_lock_excludes_another_process_until_released(tmp_path):
    path = tmp_path / "new" / "folder" / "x.lock"  # created with its folders
    with file_lock(path):
        assert path.is_file()
        assert try_lock(path) == 1
    assert try_lock(path) == 0


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    assert atomic_write_text(path, "old") == path
    atomic_write_text(path, "new ü")
    assert path.read_text() == "new ü"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_failed_atomic_write_keeps_the_target_and_removes_its_temporary(tmp_path):
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty folder: the rename onto it fails
    with pytest.raises(OSError):
        atomic_write_text(target, "text")
    assert (target / "inside").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_concurrent_writers_of_one_path_do_not_share_a_temporary(tmp_path):
    path, errors = tmp_path / "shared.txt", []
    texts = [str(i) * 100_000 for i in range(8)]

    def write(text):
        try:
            for _ in range(30):
                atomic_write_text(path, text)
        except Exception as err:  # a shared temporary: renamed away by the other writer
            errors.append(err)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and path.read_text() in texts
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_suggest_names_the_closest_options():
    assert suggest("locl", ("local", "debug", "slurm"), n=1) == "did you mean 'local'?"
    assert suggest("max_stepz", ["max_steps", "min_steps", "seq_len"]) == \
        "did you mean 'max_steps' or 'min_steps'?"
    assert suggest("grdi", ["grid", "base"], lead="; ") == "; did you mean 'grid'?"
    assert suggest("zzzz", ["grid", "base"], lead="; ") == ""

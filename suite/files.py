"""Small helpers the suite's modules share: an exclusive file lock, atomic file writes, and the
"did you mean" hint of error messages."""

from __future__ import annotations

import difflib
import fcntl
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, with its folder, if missing) for the block. An
    flock: it works across processes (and, on a shared file system that supports it, hosts) and is
    released by the kernel should the holder die."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `path` so that a reader (or a crash) sees the old content or the new, never a part:
    a temporary file beside it, then one rename. The temporary name carries the process and
    thread, so concurrent writers of the same path do not share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when the write or the rename failed
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write_bytes` of `text` in UTF-8."""
    return atomic_write_bytes(path, text.encode())


def suggest(word: str, options: Iterable[str], n: int = 2, lead: str = "") -> str:
    """`lead` + "did you mean 'a' or 'b'?" for the options closest to a mistyped `word`; "" when
    none is close."""
    close = difflib.get_close_matches(word, list(options), n=n)
    return f"{lead}did you mean {' or '.join(repr(c) for c in close)}?" if close else ""

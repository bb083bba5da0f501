"""lm-eval's own command line with the `periln` model registered (lm-eval has no plugin hook).
Run it as suite/lm_eval_cli.py, which hands it the suite's checkpoint loader:

    python -m suite.lm_eval_cli run --model periln \
        --model_args checkpoint=runs/default/peri_ln-tiny-lr0.001-s0 \
        --tasks arc_easy,piqa --limit 50 --batch_size 32 [--data-dir DIR]

Every lm-eval option works as documented. One is ours: `--data-dir DIR` points the named tasks
(of evals.tasks) at the local files in DIR, offline, as `periln eval --data-dir` does. Model
arguments (--model_args): checkpoint (a .ckpt, run directory or run key), out_dir (where run keys
are looked up), dtype, max_length, prefix_eot. The batch size is lm-eval's --batch_size (lm-eval's
default is 1; here it is 32 unless given; a batch_size in --model_args is moved there).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from typing import Any

from models import ConfigError


def _pop_option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            del argv[i]
            return argv.pop(i)
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _task_span(argv: list[str]) -> tuple[int, int]:
    """[start, end) of the --tasks values in argv."""
    for i, arg in enumerate(argv):
        if arg.startswith("--tasks="):
            return i, i + 1
        if arg in ("--tasks", "-t"):
            end = i + 1
            while end < len(argv) and not argv[end].startswith("-"):
                end += 1
            return i, end
    raise ConfigError("--data-dir needs --tasks (e.g. --tasks arc_easy,piqa)")


def _batch_size_option(argv: list[str]) -> None:
    """lm-eval passes its --batch_size (default 1) to the model besides --model_args: one place."""
    if any(a in ("--batch_size", "-b") or a.startswith("--batch_size=") for a in argv):
        return
    size = "32"
    for i, arg in enumerate(argv):
        if arg == "--model_args" and i + 1 < len(argv):
            kept = []
            for kv in argv[i + 1].split(","):
                if kv.strip().startswith("batch_size="):
                    size = kv.split("=", 1)[1]
                else:
                    kept.append(kv)
            argv[i + 1] = ",".join(kept)
    if argv and argv[0] not in ("ls", "validate", "-h", "--help"):  # `run`, or lm-eval's legacy form
        argv += ["--batch_size", size]


def main(argv: list[str] | None = None, checkpoint_loader: Callable[[str, str], Any] | None = None) -> None:
    """checkpoint_loader: how the model argument `checkpoint=` becomes (model, tokenizer, path); see
    evals.adapter.PerilnLM.checkpoint_loader."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _batch_size_option(argv)
    from lm_eval.__main__ import cli_evaluate

    from evals.adapter import PerilnLM  # registers the `periln` model

    if checkpoint_loader is not None:
        PerilnLM.checkpoint_loader = checkpoint_loader

    try:
        data_dir = _pop_option(argv, "--data-dir")
        if data_dir is None:
            sys.argv = ["lm-eval", *argv]
            cli_evaluate()
            return
        from evals import data as task_data
        from evals.tasks import resolve_tasks

        start, end = _task_span(argv)
        given = (argv[start].split("=", 1)[1] if argv[start].startswith("--tasks=")
                 else ",".join(argv[start + 1:end]))
        names = resolve_tasks(given)
        files = task_data.locate(data_dir, names)
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"lm_eval_cli: error: {line}", file=sys.stderr)
        sys.exit(2)
    with task_data.offline(), tempfile.TemporaryDirectory(prefix="periln-tasks-") as scratch:
        from pathlib import Path

        task_data.write_group(Path(scratch), files)
        argv[start:end] = ["--tasks", task_data.GROUP, "--include_path", scratch]
        sys.argv = ["lm-eval", *argv]
        cli_evaluate()


if __name__ == "__main__":
    main()

"""Offline task data: local files in the Hugging Face schema, fed to lm-eval's own task configs.

A data directory holds one file per task named `<stem>_<split>` + one of DATA_EXTS, e.g.

    arc_easy_test.jsonl.gz        arc_challenge_test.jsonl.gz     hellaswag_validation.jsonl.gz
    piqa_validation.jsonl.gz      social_iqa_validation.jsonl.gz  winogrande_xl_validation.jsonl.gz

(the split is the one lm-eval scores; `<stem>_train` files, and ARC's `_validation`, are optional
and only used as few-shot sources). At run time a group YAML is written into a scratch folder: each
entry names the built-in task and overrides only where its data comes from, so lm-eval's prompts,
`process_docs` and metrics are used unchanged (docs/stack.md, "lm-eval").
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from evals.tasks import TASKS, TaskSpec
from models import ConfigError

DATA_EXTS = (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".parquet")
GROUP = "periln_local"  # the generated group's name (its members keep the built-in task names)
FEWSHOT_SPLITS = ("train", "validation")


def expected_files(tasks: tuple[str, ...] | list[str]) -> list[str]:
    return [f"{TASKS[t].file_stem()}.jsonl.gz" for t in tasks]


def find_file(data_dir: Path, stem: str) -> Path | None:
    for ext in DATA_EXTS:
        if (p := data_dir / f"{stem}{ext}").is_file():
            return p
    return None


def locate(data_dir: str | Path, tasks: tuple[str, ...] | list[str]) -> dict[str, dict[str, Path]]:
    """{task: {split: file}} for the tasks' scored splits (required) and few-shot splits (optional);
    every missing file is one line of the ConfigError."""
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise ConfigError(f"data directory {d} not found; give --data-dir a folder with "
                          f"{', '.join(expected_files(tasks))} "
                          "(`periln data fetch-benchmarks DIR` saves them)")
    found, missing = {}, []
    for name in tasks:
        spec = TASKS[name]
        path = find_file(d, spec.file_stem())
        if path is None:
            missing.append(f"task {name}: {d / spec.file_stem()}.jsonl.gz not found (also tried "
                           f"{', '.join(DATA_EXTS[1:])}); `periln data fetch-benchmarks {d}` saves it")
            continue
        files = {spec.split: path}
        for split in FEWSHOT_SPLITS:
            if split != spec.split and (extra := find_file(d, spec.file_stem(split))):
                files[split] = extra
        for p in files.values():
            check_schema(p, spec)
        found[name] = files
    if missing:
        raise ConfigError("\n".join(missing))
    return found


def _first_record(path: Path) -> dict[str, Any] | None:
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=1), None)
        rows = batch.to_pylist() if batch is not None else []
        return rows[0] if rows else None
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if name.removesuffix(".gz").endswith(".json"):
            head = f.read(1)
            f.seek(0)
            if head == "[":  # a JSON array rather than JSON lines
                rows = json.load(f)
                return rows[0] if rows else None
        for line in f:
            if line.strip():
                return json.loads(line)
    return None


def check_schema(path: Path, spec: TaskSpec) -> None:
    """The first record has the fields the task's lm-eval config reads (its HF schema)."""
    try:
        row = _first_record(path)
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(f"task {spec.name}: cannot read {path} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); expected JSON lines "
                          "(optionally gzip) or parquet") from None
    except Exception as err:  # pyarrow's errors
        raise ConfigError(f"task {spec.name}: cannot read {path} ({type(err).__name__}); expected "
                          "JSON lines (optionally gzip) or parquet") from None
    if not isinstance(row, dict):
        raise ConfigError(f"task {spec.name}: {path} has no records (expected one JSON object a line)")
    lacking = [f for f in spec.fields if f not in row]
    if spec.name.startswith("arc") and "choices" in row and not (
            isinstance(row["choices"], dict) and {"text", "label"} <= set(row["choices"])):
        lacking.append("choices.text/choices.label")
    if lacking:
        raise ConfigError(f"task {spec.name}: {path} does not have the {spec.hub} schema: lacks "
                          f"{', '.join(lacking)} (has {', '.join(map(str, row)) or 'nothing'})")


def _builder(path: Path) -> str:
    return "parquet" if path.name.endswith(".parquet") else "json"


def group_config(files: dict[str, dict[str, Path]], cache_dir: str | Path | None = None) -> dict:
    """The group YAML (as data) whose entries point the built-in tasks at local files."""
    entries = []
    for name, splits in files.items():
        spec = TASKS[name]
        kinds = {_builder(p) for p in splits.values()}
        if len(kinds) > 1:
            raise ConfigError(f"task {name}: mixes JSON and parquet files "
                              f"({', '.join(map(str, splits.values()))}); use one kind per task")
        kwargs: dict[str, Any] = {"data_files": {s: str(p.resolve()) for s, p in splits.items()}}
        if cache_dir is not None:
            kwargs["cache_dir"] = str(Path(cache_dir).expanduser().resolve())
        entries.append({
            "task": name,
            "dataset_path": kinds.pop(),
            "dataset_name": None,
            "dataset_kwargs": kwargs,
            # a split without a file is switched off; the scored one is always present
            "training_split": "train" if "train" in splits else None,
            "validation_split": "validation" if "validation" in splits else None,
            "test_split": "test" if spec.split == "test" else None,
        })
    return {"group": GROUP, "task": entries}


def write_group(folder: Path, files: dict[str, dict[str, Path]], cache_dir: str | Path | None = None) -> Path:
    path = folder / f"{GROUP}.yaml"
    path.write_text(yaml.safe_dump(group_config(files, cache_dir), sort_keys=False))
    return path


def builtin_task_dirs(tasks: tuple[str, ...] | list[str]) -> list[Path]:
    """The folders of lm-eval's own configs for these tasks (indexing only them is ~100x faster
    than lm-eval's whole task tree)."""
    import lm_eval.tasks

    root = Path(lm_eval.tasks.__file__).parent
    return sorted({root / TASKS[t].folder for t in tasks})


OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@contextmanager
def offline() -> Iterator[None]:
    """No hub access inside: local files only (compute nodes often have no internet). The
    environment and the libraries' copies of it are restored on exit."""
    import sys

    saved_env = {k: os.environ.get(k) for k in OFFLINE_VARS}
    # both libraries read the variables once, at import: set their copies too if they are loaded
    targets = []
    if "datasets" in sys.modules:
        targets += [(sys.modules["datasets"].config, k) for k in OFFLINE_VARS]
    if "huggingface_hub" in sys.modules:
        targets.append((sys.modules["huggingface_hub"].constants, "HF_HUB_OFFLINE"))
    saved_attrs = [(obj, k, getattr(obj, k)) for obj, k in targets if hasattr(obj, k)]
    try:
        for k in OFFLINE_VARS:
            os.environ[k] = "1"
        for obj, k, _ in saved_attrs:
            setattr(obj, k, True)
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for obj, k, v in saved_attrs:
            setattr(obj, k, v)


# ------------------------------------------------------------------------------------- fetching

def write_jsonl_gz(rows, path: Path) -> int:
    """Rows as gzip JSON lines, written atomically; returns the number of rows."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    # mtime=0: the same rows give the same bytes
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            n += 1
    os.replace(tmp, path)
    return n


def fetch_benchmarks(out_dir: str | Path, tasks: tuple[str, ...] | list[str], fewshot_splits: bool = False,
                     load: Callable | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Save each task's scored split (and, with fewshot_splits, its train split and ARC's
    validation split) from the hub into out_dir under the names `periln eval --data-dir` expects.
    `load(path, name, split=...)` defaults to datasets.load_dataset."""
    if load is None:
        import datasets

        load = datasets.load_dataset
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in tasks:
        spec = TASKS[name]
        path_, _, config = spec.hub.partition(":")
        splits = [spec.split]
        if fewshot_splits:
            splits += [s for s in FEWSHOT_SPLITS if s != spec.split]
        for split in splits:
            try:
                ds = load(path_, config or None, split=split)
            except Exception as err:
                if split != spec.split:  # an optional split the dataset does not have
                    log(f"{name}: no {split} split on the hub ({type(err).__name__}); skipped")
                    continue
                first = str(err).splitlines()[0][:200] if str(err) else ""
                raise ConfigError(f"fetch {name}: cannot load {spec.hub} split {split!r} from the hub "
                                  f"({type(err).__name__}: {first}); run this where the hub is "
                                  "reachable and copy the folder") from None
            path = out / f"{spec.file_stem(split)}.jsonl.gz"
            n = write_jsonl_gz(ds, path)
            log(f"{name}: {n} rows of {spec.hub} {split} -> {path}")
            written.append(path)
    return written

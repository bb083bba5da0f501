"""The records as two tidy CSV files: MLflow -> runs.csv (+ curves.csv), their schema, reading and
writing them.

Both files are the interface between the records and everything built from them (suite.analysis,
suite.tables, suite.figures); both are results in their own right, and `periln tables --from-csv
runs.csv` rebuilds every table and figure from them without MLflow:

- `runs.csv`: one row per run. Leading columns RUN_COLUMNS (identity, status, provenance, final
  train/val loss, val bits per byte), then every other final metric of the run, sorted by name
  (`eval/<task>/<metric>`, `diag/var/layer_03`, `diag/spikes`, ...). Empty cell = not recorded.
- `curves.csv`: one row per logged point, columns CURVE_COLUMNS (key, metric, step, value), for the
  figures (loss curves).

Writing the same rows again gives the same bytes (sorted rows and columns, shortest round-trip
floats). Only suite/tracking.py imports mlflow; `export` asks it for the runs.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from models import ConfigError

# ------------------------------------------------------------------------------------------ schema

RUN_COLUMNS: tuple[str, ...] = (
    "key", "sweep", "arm", "group", "placement", "placement_args", "variant", "size", "lr", "seed",
    "status", "diverged_step", "step", "n_layers", "d_model", "embed_norm", "tokenizer", "data_source",
    "val_source", "benchmark_data", "unigram_ce", "commit", "dirty", "train_loss", "val_loss",
    "val_bpb", "tokens_per_s",
)
CURVE_COLUMNS: tuple[str, ...] = ("key", "metric", "step", "value")
# what a runs.csv must have for anything to be built (the other columns may be missing: not recorded)
REQUIRED_COLUMNS = ("key", "arm", "placement", "size", "lr", "seed", "status")
INT_COLUMNS = ("seed", "diverged_step", "step", "n_layers", "d_model")
FLOAT_COLUMNS = ("lr", "unigram_ce", "train_loss", "val_loss", "val_bpb", "tokens_per_s")
# metrics mapped onto the leading columns (their final values) rather than repeated under their name
FINAL_ALIASES = {"train/loss": "train_loss", "val/loss": "val_loss", "val/bpb": "val_bpb",
                 "train/tokens_per_s": "tokens_per_s"}


# --------------------------------------------------------------------------------------- reading

def _num(text: str, where: str) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: expected a number; got {text!r}") from None


def read_runs(path: str | Path) -> list[dict[str, Any]]:
    """runs.csv -> one dict per run: identity columns as str/int/float, metrics as float or None."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (export one with `periln tables SWEEP`)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(line for line in fh if not line.startswith("#"))
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; expected runs.csv columns "
                              f"{', '.join(RUN_COLUMNS)}")
        rows = []
        for i, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            for col, text in raw.items():
                text = text or ""
                where = f"{path.name} line {i}, column {col}"
                if col in INT_COLUMNS:
                    v = _num(text, where)
                    row[col] = None if v is None else int(v)
                elif col in FLOAT_COLUMNS or "/" in col or col.startswith("lr-"):
                    row[col] = _num(text, where)
                else:
                    row[col] = text
            if row.get("lr") is None or row.get("seed") is None:
                raise ConfigError(f"{path.name} line {i}: lr and seed are required")
            for col in RUN_COLUMNS:  # a file of an earlier version: what it lacks was not recorded
                row.setdefault(col, None if col in INT_COLUMNS or col in FLOAT_COLUMNS else "")
            rows.append(row)
    return rows


def read_curves(path: str | Path) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """curves.csv -> {key: {metric: (steps, values)}}, steps ascending."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    path = Path(path)
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(line for line in fh if not line.startswith("#"))
        missing = [c for c in CURVE_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; expected curves.csv "
                              f"columns {', '.join(CURVE_COLUMNS)}")
        for i, raw in enumerate(reader, start=2):
            step = _num(raw["step"] or "", f"{path.name} line {i}, column step")
            value = _num(raw["value"] or "", f"{path.name} line {i}, column value")
            if step is None or value is None:
                raise ConfigError(f"{path.name} line {i}: step and value are required")
            out.setdefault(raw["key"], {}).setdefault(raw["metric"], []).append((int(step), value))
    return {k: {m: ([s for s, _ in sorted(pts)], [v for _, v in sorted(pts)]) for m, pts in ms.items()}
            for k, ms in out.items()}


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest round-trip form: stable and lossless
    return str(v)


def write_runs_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write runs.csv: RUN_COLUMNS, then every other column present, sorted; rows sorted by key."""
    extra = sorted({c for r in rows for c in r} - set(RUN_COLUMNS))
    cols = [*RUN_COLUMNS, *extra]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in sorted(rows, key=lambda r: str(r["key"])):
        w.writerow([_csv_value(r.get(c)) for c in cols])
    return write_atomic(Path(path), buf.getvalue())


def write_curves_csv(points: Iterable[tuple[str, str, int, float]], path: str | Path) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CURVE_COLUMNS)
    for key, metric, step, value in sorted(points, key=lambda p: (p[0], p[1], p[2])):
        w.writerow([key, metric, int(step), _csv_value(float(value))])
    return write_atomic(Path(path), buf.getvalue())


def write_atomic(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------- MLflow -> CSVs

def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """One exported record (tracking.export_runs) -> one runs.csv row. Identity comes from the tags
    RunConfig.identity recorded (never from cutting the run key apart)."""
    params, tags, metrics = run.get("params", {}), run.get("tags", {}), run.get("metrics", {})

    def get(name: str, default: Any = None) -> Any:
        for source in (tags, params):
            if source.get(name) not in (None, ""):
                return source[name]
        return default

    def number(name: str, kind: type) -> Any:
        v = get(name)
        return None if v in (None, "", "None") else kind(float(v))

    placement = str(get("placement", ""))
    args = {k[len("placement_args."):]: v for k, v in params.items() if k.startswith("placement_args.")}
    embed = get("embed_norm")
    row: dict[str, Any] = dict(
        key=str(get("run_key") or run.get("name") or ""), sweep=get("sweep", ""),
        arm=get("arm", placement), group=get("group", ""), placement=placement,
        placement_args=";".join(f"{k}={v}" for k, v in sorted(args.items())),
        variant=get("variant", ""), size=str(get("size", "")), lr=number("lr", float),
        seed=number("seed", int) or 0, status=get("status", ""),
        diverged_step=number("diverged_step", int), step=run.get("step"),
        n_layers=number("n_layers", int), d_model=number("d_model", int),
        embed_norm=None if embed is None else str(embed).lower() == "true",
        tokenizer=params.get("data.tokenizer", ""), data_source=params.get("data.source", ""),
        val_source=params.get("data.val_source", "") if params.get("data.val_source") != "None" else "",
        benchmark_data=get("benchmark_data", ""), unigram_ce=number("unigram_ce", float),
        commit=get("git_commit") or get("commit") or "", dirty=get("git_dirty") or get("dirty") or "",
    )
    for name, value in metrics.items():
        row[FINAL_ALIASES.get(name, name)] = float(value)
    return row


def export(sweep: str, out_dir: str | Path, tracking_uri: str | None = None) -> tuple[Path, Path]:
    """The sweep's MLflow runs -> <out_dir>/runs.csv and <out_dir>/curves.csv."""
    from suite import tracking

    runs = tracking.export_runs(sweep, tracking_uri)
    if not runs:
        raise ConfigError(f"no MLflow runs for sweep {sweep!r} in {tracking_uri or 'the default store'}; "
                          "submit it first (periln submit) or pass --from-csv runs.csv")
    rows, points = [], []
    for run in runs:
        row = run_row(run)
        rows.append(row)
        for metric, history in run.get("history", {}).items():
            points.extend((row["key"], metric, int(s), float(v)) for s, v in history)
    out_dir = Path(out_dir)
    return write_runs_csv(rows, out_dir / "runs.csv"), write_curves_csv(points, out_dir / "curves.csv")

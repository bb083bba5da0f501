"""Run configuration: frozen, typed dataclasses, validated once at the edge (YAML, key=value).

A problem in user input becomes a ConfigError whose lines each say where (file and dotted key),
what was expected and what arrived. YAML 1.1 reads `1e-3` as a string: numeric strings are coerced
to the declared float/int type, anything else is rejected.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from models import SIZES, ConfigError, ModelConfig
from models.placements import get_placement
from models.placements.base import coerce as scalar
from suite.files import suggest

# "auto": bf16-mixed on a CUDA GPU that supports bf16, else "32" (suite.fastpath.resolve_precision)
Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Strategy = Literal["auto", "ddp", "fsdp"]


@dataclass(frozen=True)
class DataConfig:
    # "synthetic" (built in), local files (a file, directory or glob of .txt/.jsonl/.json/.parquet,
    # optionally .gz/.xz compressed), or "hf:<dataset>[:<config>]" through `datasets`.
    source: str = "synthetic"
    # held-out text for the val loss: same forms as source; None holds out a slice of `source`
    val_source: str | None = None
    val_fraction: float = 0.01  # share of documents held out when val_source is None
    # "byte", "tiktoken:<encoding>", "hf:<name>", or "files:<dir>" (GPT-2 style encoder.json +
    # vocab.bpe, vocab.json + merges.txt, or tokenizer.json)
    tokenizer: str = "byte"
    text_field: str = "text"
    split: str = "train"  # split of an hf: source
    val_split: str = "validation"  # split of an hf: val_source
    streaming: bool = False  # stream an hf: source instead of downloading it whole
    max_tokens: int | None = None  # tokens taken from the training source (None: all)
    val_tokens: int = 1 << 18  # tokens kept for the val loss
    synthetic_docs: int = 20_000  # documents of the built-in synthetic corpus
    cache_dir: str = ".cache/periln"
    num_workers: int | None = None  # None: 2 on a CUDA GPU (ours), 0 on CPU (suite.data.loader_workers)


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 128
    batch_size: int = 16  # sequences per device per micro-step
    accumulate: int = 1
    max_steps: int = 200
    tokens: int | None = None  # if set, the budget in tokens; it then defines max_steps
    warmup_fraction: float = 0.05  # ours: linear warmup over this share of the steps
    min_lr_ratio: float = 0.1  # ours: cosine decays to this fraction of the peak LR
    weight_decay: float = 0.1  # ours; applied to 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 turns clipping off
    precision: Precision = "auto"
    val_every: int = 50  # steps between val-loss measurements
    val_batches: int = 4
    log_every: int = 10
    ckpt_every: int = 100
    devices: int = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: Strategy = "auto"
    # torch.compile of the model and loss; "auto": on for CUDA, off on CPU (suite.fastpath.resolve_compile)
    compile: Literal["auto", True, False] = "auto"
    activation_checkpointing: bool = False  # recompute each block in the backward (saves memory)
    progress_bar: bool = True


@dataclass(frozen=True)
class DiagnosticsConfig:
    """The diagnostics callback (suite/diagnostics.py). Every default here is OURS: the paper does
    not state its definitions (docs/paper.md section 3, "Diagnostics")."""

    enabled: bool = True
    every: int = 50  # K: steps between probes (activations, per-block grads, norm gains) on a fixed batch
    probe_batch: int = 4  # sequences of the first training batch kept as the fixed probe batch
    spike_ratio: float = 5.0  # r: a step is a spike when its pre-clip grad norm > r x trailing median
    spike_window: int = 50  # steps in the trailing median; no spike is counted before it is full
    # a spike also needs a norm above this: where gradients start near zero (a zero-init gate:
    # ReZero) the median is near zero and any rise is a large ratio, not a spike
    spike_floor: float = 0.01
    diverge_loss: float | None = None  # loss threshold; None: 1.2 x ln(vocab), 20% worse than uniform
    diverge_patience: int = 50  # N: consecutive steps above the threshold that count as divergence
    check_every: int = 10  # steps between host reads of loss/grad norm (the rules still see every step)

    def __post_init__(self) -> None:
        for name in ("every", "probe_batch", "spike_window", "diverge_patience", "check_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not self.spike_ratio > 1:
            raise ValueError(f"spike_ratio must be > 1; got {self.spike_ratio}")
        if not self.spike_floor >= 0:
            raise ValueError(f"spike_floor must be >= 0; got {self.spike_floor}")
        if self.diverge_loss is not None and not self.diverge_loss > 0:
            raise ValueError(f"diverge_loss must be > 0 (or null); got {self.diverge_loss}")


def _model_overrides() -> type:
    """ModelOverrides: every ModelConfig field a run may set, typed as ModelConfig declares it, None
    = the size's value (or ModelConfig's default). Built from ModelConfig so the two never drift."""
    hints = typing.get_type_hints(ModelConfig)
    names = [f.name for f in fields(ModelConfig) if f.name not in RUN_DECIDES]

    def items(self) -> list[tuple[str, Any]]:
        """The fields this run sets, in declaration order."""
        return [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]

    cls = dataclasses.make_dataclass(
        "ModelOverrides", [(n, hints[n] | None, field(default=None)) for n in names], frozen=True,
        namespace={"__doc__": _model_overrides.__doc__, "items": items})
    cls.__module__ = __name__
    return cls


# fields of ModelConfig that the run decides (tokenizer, sequence length, placement): not overrides
RUN_DECIDES = ("vocab_size", "max_seq_len", "placement", "placement_args")
ModelOverrides = _model_overrides()
MODEL_OVERRIDES = tuple(f.name for f in fields(ModelOverrides))


@dataclass(frozen=True)
class RunConfig:
    placement: str = "pre_ln"
    placement_args: Mapping[str, Any] = field(default_factory=dict)
    size: str = "tiny"
    lr: float = 1e-3
    seed: int = 0
    # ModelConfig fields that override the size's (e.g. norm, qk_norm, n_kv_heads, init_scheme)
    model: ModelOverrides = field(default_factory=ModelOverrides)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    sweep: str = "default"  # the experiment this run belongs to
    out_dir: str = "runs"  # the run lives in <out_dir>/<sweep>/<key>
    # appended to the run key (-<variant>) when a sweep's grid varies a field the key does not name
    # (e.g. model.qk_norm); suite.sweep sets it, so every cell keeps a distinct identity
    variant: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "placement_args", MappingProxyType(dict(self.placement_args)))

    # Run identity, composed here and only here; readers (tables, search, status) take these
    # properties from the run's tags and CSV columns and never cut a key apart.
    @property
    def placement_label(self) -> str:
        """<placement>[_<arg><value>...]: the placement with its arguments."""
        return self.placement + "".join(f"_{k}{fmt_value(v)}" for k, v in sorted(self.placement_args.items()))

    @property
    def arm(self) -> str:
        """What tables compare: the placement, its arguments and any variant (no size, LR, seed)."""
        return self.placement_label + (f"-{self.variant}" if self.variant else "")

    @property
    def group(self) -> str:
        """What a learning-rate search tunes over: the arm at one size (no LR, no seed)."""
        return self.placement_label + f"-{self.size}" + (f"-{self.variant}" if self.variant else "")

    @property
    def key(self) -> str:
        """Run identity: <placement>[_<arg><value>...]-<size>-lr<lr>-s<seed>[-<variant>]."""
        variant = f"-{self.variant}" if self.variant else ""
        return f"{self.placement_label}-{self.size}-lr{fmt_value(self.lr)}-s{self.seed}{variant}"

    @property
    def identity(self) -> dict[str, str]:
        """What tables and search group by, recorded as MLflow tags and runs.csv columns: the key's
        parts, and the resolved architecture a reader must not have to re-derive (depth, width, and
        whether the embedding output is normalized: the size's or placement's default when unset)."""
        arch = {**SIZES[self.size], **dict(self.model.items())}
        embed = self.model.embed_norm
        if embed is None:
            embed = bool(get_placement(self.placement, **self.placement_args).embed_norm)
        return {"run_key": self.key, "sweep": self.sweep, "arm": self.arm, "group": self.group,
                "placement": self.placement, "size": self.size, "lr": fmt_value(self.lr),
                "seed": str(self.seed), "variant": self.variant, "n_layers": str(arch["n_layers"]),
                "d_model": str(arch["d_model"]), "embed_norm": str(embed)}

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.sweep / self.key

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, max_seq_len=self.train.seq_len,
                           placement=self.placement, placement_args=self.placement_args,
                           **{**SIZES[self.size], **dict(self.model.items())})

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


# Settings that never change what a run computes (where it lives, how its data loads, how it
# prints): a run key may move between machines and folders with these changed. Every other setting
# is the run's identity beside its key: a result or checkpoint is never reused under another.
NOT_IDENTITY = ("out_dir", "data.cache_dir", "data.num_workers", "train.progress_bar")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {'train.max_steps': '200', ...}; an empty section stays visible as '{}'."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = "{}" if isinstance(value, Mapping) else str(value)
    return out


def run_settings(cfg: RunConfig) -> dict[str, str]:
    """What a run computes from, flattened (the identity settings; token budgets resolved by the
    caller: suite.cost.resolve_budget)."""
    return {k: v for k, v in flatten(cfg.to_dict()).items() if k not in NOT_IDENTITY}


def settings_sha(settings: Mapping[str, str]) -> str:
    """A short hash of run settings, recorded with the run (result.json, the MLflow tag config_sha)."""
    text = json.dumps(dict(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# sections that write only what a run sets (suite.config._plain): a key only one side has is a change
SET_ONLY = ("model.", "placement_args.")


def setting_changes(recorded: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """Identity settings that differ between a recorded run and the one now asked for, one line
    each. A setting only one side has counts where a section writes only what a run sets (model,
    placement_args); elsewhere it is a field another version of this code did not have."""
    lines = []
    for k in sorted(set(recorded) | set(now)):
        if k in NOT_IDENTITY or recorded.get(k) == now.get(k):
            continue
        if k in recorded and k in now or k.startswith(SET_ONLY):
            lines.append(f"{k}: recorded {recorded.get(k, 'unset')!r}, now {now.get(k, 'unset')!r}")
    return lines


def fmt_value(v: Any) -> str:
    """A value as run keys and labels write it (1e-3 -> '0.001')."""
    return f"{v:g}" if isinstance(v, float) else str(v)


def _plain(obj: Any) -> Any:
    if isinstance(obj, ModelOverrides):  # only what the run sets: config.yaml stays as written
        return dict(obj.items())
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------- parsing
#
# The one parse: `parse(cls, data, where)` (or `build` when the caller collects problems from several
# sections, as a sweep file does) validates and coerces plain data into the frozen dataclass once,
# at the edge. Every reader of a config gets the dataclass, never the mapping.

def coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """`value` as type `tp` (a dataclass, Literal, Optional, bool, int, float, str or Mapping), or
    a line appended to `problems`. YAML 1.1 reads 1e-3 as a string: numeric strings become numbers."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        opts = typing.get_args(tp)
        if value is None and type(None) in opts:
            return None
        inner = [t for t in opts if t is not type(None)]
        return coerce(value, inner[0], where, problems)
    if origin is Literal:
        allowed = typing.get_args(tp)
        # a bool stays a bool (Literal["auto", True, False]); numbers become their text ("32")
        text = value
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            text = str(value)
        if text not in allowed:
            problems.append(f"{where}: expected one of {', '.join(map(str, allowed))}; got {value!r}")
        return text
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping of {tp.__name__} fields; got {value!r}")
            return tp()
        return build(tp, value, where, problems)
    if origin in (Mapping, dict) or tp in (Mapping, dict):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping; got {value!r}")
            return {}
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false; got {value!r}")
        return value
    if tp in (int, float):
        try:  # the one rule for YAML numbers (1e-3 arrives as text), shared with placement arguments
            number = scalar(value, tp)
        except ValueError:
            if isinstance(value, str):
                want = "an integer" if _is_number(value) else "a number"
            elif tp is int and isinstance(value, (int, float)) and not isinstance(value, bool):
                want = "an integer"
            else:
                want = tp.__name__
            problems.append(f"{where}: expected {want}; got {value!r}")
            return value
        if not math.isfinite(number):
            problems.append(f"{where}: expected a finite {tp.__name__}; got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"{where}: expected a string; got {value!r}")
        return str(value)
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build(cls: type, data: Mapping[str, Any], where: str, problems: list[str]) -> Any:
    """`cls` (a frozen config dataclass) from a mapping; problems appended, one line each."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if not where.endswith(":") else f"{where} {key}"
        if key not in names:
            what = "unknown model field" if cls is ModelOverrides else "unknown key"
            hint = suggest(str(key), names, n=1, lead="; ") or f"; known keys: {', '.join(names)}"
            problems.append(f"{path}: {what}{hint}")
            continue
        kwargs[key] = coerce(value, hints[key], path, problems)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        problems.append(f"{where}: {err}")
        return cls()


def parse(cls: type, data: Any, where: str) -> Any:
    """`build` for one section: raises one ConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields; got {type(data).__name__}")
    out = build(cls, data, where, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return out


def field_type(dotted: str, at: str, problems: list[str]) -> Any:
    """The declared type of a dotted RunConfig field (None after reporting a problem)."""
    parts = dotted.split(".")
    cls: Any = RunConfig
    for i, part in enumerate(parts):
        rest = parts[i + 1:]
        names = [f.name for f in fields(cls)]
        if part not in names:
            prefix = ".".join(parts[:i])
            what = ("model field" if cls is ModelOverrides
                    else f"field of {prefix}" if prefix else "run field")
            problems.append(f"{at}: unknown {what} {part!r}{suggest(part, names, lead='; ')}")
            return None
        tp = typing.get_type_hints(cls)[part]
        if not rest:
            return tp
        if cls is RunConfig and part == "placement_args":
            return Any if len(rest) == 1 else None  # checked by the placement's own declaration
        if not dataclasses.is_dataclass(tp):
            problems.append(f"{at}: {'.'.join(parts[:i + 1])} is a value, not a section")
            return None
        cls = tp
    return None


def check_value(dotted: str, value: Any, at: str, problems: list[str]) -> Any:
    """`value` coerced to the type of the dotted RunConfig field (sizes checked against SIZES)."""
    tp = field_type(dotted, at, problems)
    if tp is None:
        return value
    if dotted == "size" and isinstance(value, str) and value not in SIZES:
        problems.append(f"{at}: unknown size {value!r}{suggest(value, SIZES, lead='; ')}; "
                        f"known: {', '.join(SIZES)}")
        return value
    if tp is Any:
        return value
    return coerce(value, tp, at, problems)


def _check_run(cfg: RunConfig, where: str, problems: list[str]) -> RunConfig:
    """Cross-field checks of a built RunConfig; returns it with the placement's arguments coerced to
    their declared types (so the run key writes 0.1, never the YAML text '1e-1')."""
    try:
        args = get_placement(cfg.placement).parse_args(cfg.placement_args)
        cfg = dataclasses.replace(cfg, placement_args={k: getattr(args, k) for k in cfg.placement_args})
    except ConfigError as err:
        problems.append(f"{where} placement: {err}")
    if cfg.size not in SIZES:
        problems.append(f"{where} size: unknown size {cfg.size!r}{suggest(cfg.size, SIZES, lead='; ')}; "
                        f"known: {', '.join(SIZES)}")
    t = cfg.train
    for name in ("seq_len", "batch_size", "accumulate", "max_steps", "devices", "num_nodes",
                 "val_every", "val_batches", "log_every", "ckpt_every"):
        if getattr(t, name) < 1:
            problems.append(f"{where} train.{name}: must be >= 1; got {getattr(t, name)}")
    if not cfg.lr > 0:
        problems.append(f"{where} lr: must be > 0; got {cfg.lr}")
    if not problems:  # the model's own checks, on settings that passed the run's
        try:
            cfg.model_config(vocab_size=257)
        except ConfigError as err:
            problems.append(f"{where} {err}")
    return cfg


def run_config_from_dict(data: Mapping[str, Any], where: str) -> RunConfig:
    """A validated RunConfig from plain data; all problems reported together, one per line."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of run settings; got {type(data).__name__}")
    cfg = build(RunConfig, data, f"{where}:", problems)
    if not problems:
        cfg = _check_run(cfg, where + ":", problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg


def at_least(minimum: int) -> Any:
    """An argparse type: an integer >= `minimum` (a count: --batch-size, --parallel, --workers)."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value

    count.__name__ = f"integer >= {minimum}"
    return count


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part!r} is not a section")
    node[last] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings (dotted keys, YAML values) as a nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML "
                              f"({getattr(err, 'problem', None) or 'unreadable'}); quote it, "
                              f"e.g. {key}='\"...\"', or fix its brackets") from None
        if not key.strip():
            raise ConfigError(f"override {item!r}: no key before '='; e.g. train.max_steps=100")
        set_dotted(out, key.strip(), value)
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def read_yaml(path: str | Path, mapping: bool = False) -> Any:
    """A YAML file's data (an empty file: {}); `mapping`: its top level must be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; check the path")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        bad = err.object[err.start:err.start + 1]
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}: {bad!r}); save the file as "
                          "UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{at} not valid YAML ({getattr(err, 'problem', err)})") from None
    if mapping and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value lines) at the top level; "
                          f"got a {type(data).__name__}")
    return data


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    data = read_yaml(path, mapping=True) if path else {}
    data = deep_merge(data, parse_overrides(list(overrides)))
    return run_config_from_dict(data, str(path) if path else "command line")

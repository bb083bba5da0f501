"""From what a user names (a checkpoint, a run directory or a run key) to a model and its tokenizer.

A training checkpoint is the trainer's format (suite.train.LitLM), so reading one is the suite's job;
evals only scores the model and tokenizer it is handed. The same `Loaded` describes an imported
transformers folder (suite.evaluate.load_target reads one through suite.hf)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import ConfigError

LAST = Path("checkpoints") / "last.ckpt"
EXTERNAL = "external"  # the size of an imported model, and the folder its eval.json goes under
HF_KEY_PREFIX = "hf-"  # an imported folder's run key: hf-<folder name>


@dataclass(frozen=True)
class Loaded:
    model: Any  # models.Transformer, in eval mode, on the CPU
    tokenizer: Any  # suite.tokenizer.Tokenizer
    checkpoint: Path | None  # None for an imported folder (hf_folder)
    run_dir: Path  # where eval.json goes
    key: str | None  # the run key, when the checkpoint carries its run config
    step: int | None  # the training step the checkpoint was saved at
    size: str | None = None  # the run's size; EXTERNAL for an imported folder
    # whether the model saw an end-of-text token before each document: suite training joins
    # documents with it (suite/data.py); an imported model's convention is unknown, so off, as
    # lm-eval's HF model scores it
    prefix_eot: bool = True
    hf_folder: Path | None = None  # the transformers folder an imported model came from


def resolve_checkpoint(target: str | Path, out_dir: str | Path = "runs", sweep: str | None = None) -> Path:
    """A .ckpt file, a run directory (its checkpoints/last.ckpt), or a run key looked up under
    <out_dir>/<sweep>/<key> (any sweep when sweep is None)."""
    p = Path(target).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        if (p / LAST).is_file():
            return p / LAST
        raise ConfigError(f"run directory {p} has no {LAST}; train it first, or name a .ckpt file")
    if p.suffix == ".ckpt" or "/" in str(target):
        raise ConfigError(f"checkpoint {p} not found; give a .ckpt file, a run directory or a run key")
    root = Path(out_dir).expanduser()
    pattern = f"{sweep}/{target}" if sweep else f"*/{target}"
    runs = sorted(d for d in root.glob(pattern) if (d / LAST).is_file())
    if not runs:
        where = root / (sweep or "*") / str(target) / LAST
        raise ConfigError(f"run {target!r}: no checkpoint at {where}; check the key (`ls {root}/*/`), "
                          "--out-dir and --sweep")
    if len(runs) > 1:
        raise ConfigError(f"run {target!r} is in several sweeps ({', '.join(d.parent.name for d in runs)}); "
                          "pick one with --sweep")
    return runs[0] / LAST


def run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def load_checkpoint(ckpt: str | Path) -> Loaded:
    """A checkpoint saved by suite.train (LitLM): the model, in eval mode, and the run's tokenizer."""
    import torch

    from suite.tokenizer import load_tokenizer
    from suite.train import LitLM

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise ConfigError(f"checkpoint {ckpt} not found")
    try:  # read once: LitLM.load_from_checkpoint would be a second full read to learn the step
        # weights_only: tensors and plain data only (LitLM's hyperparameters are a dict), so a
        # crafted .ckpt cannot run code here
        data = torch.load(ckpt, map_location="cpu", weights_only=True)
        hp, state = data["hyper_parameters"], data["state_dict"]
        run, vocab_size = hp["run"], hp["vocab_size"]
    except pickle.UnpicklingError as err:  # torch names what it refused on a line of its own
        why = next((ln.strip() for ln in str(err).splitlines()
                    if ln.startswith(("Trying to load unsupported", "Unsupported"))), "")
        raise ConfigError(f"checkpoint {ckpt}: not a checkpoint of tensors and plain data"
                          f"{f' ({why[:160]})' if why else ''}; periln does not unpickle anything else "
                          "(it could run code): name a checkpoint saved by periln train") from None
    except Exception as err:
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise ConfigError(f"checkpoint {ckpt}: cannot read it as a periln training checkpoint "
                          f"({type(err).__name__}: {first})") from None
    try:
        lit = LitLM(run, vocab_size)
    except ConfigError as err:
        raise ConfigError(f"checkpoint {ckpt}: its run config is not valid here "
                          f"({' / '.join(str(err).splitlines())})") from None
    try:
        lit.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"checkpoint {ckpt}: weights do not fit the model its config builds "
                          f"({str(err).splitlines()[0][:200]})") from None
    tokenizer = load_tokenizer(lit.cfg.data.tokenizer)
    if tokenizer.vocab_size != vocab_size:
        raise ConfigError(f"checkpoint {ckpt}: tokenizer {lit.cfg.data.tokenizer!r} has "
                          f"{tokenizer.vocab_size} tokens but the model was trained with {vocab_size}")
    model = lit.model.eval()
    return Loaded(model, tokenizer, ckpt, run_dir_of(ckpt), lit.cfg.key, data.get("global_step"),
                  size=lit.cfg.size)


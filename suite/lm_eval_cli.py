"""lm-eval's own command line with the `periln` model reading the suite's training checkpoints.

    python -m suite.lm_eval_cli run --model periln \
        --model_args checkpoint=runs/default/peri_ln-tiny-lr0.001-s0 \
        --tasks arc_easy,piqa --limit 50 --batch_size 32 [--data-dir DIR]

The command line itself (its options, --data-dir) is evals/lm_eval_cli.py; this entry point gives it
what evals does not know: how `checkpoint=` (a .ckpt, a run directory or a run key under `out_dir=`)
becomes a model and its tokenizer.
"""

from __future__ import annotations

from typing import Any

from evals import lm_eval_cli
from suite.checkpoint import load_checkpoint, resolve_checkpoint


def load(target: str, out_dir: str) -> tuple[Any, Any, str]:
    loaded = load_checkpoint(resolve_checkpoint(target, out_dir))
    return loaded.model, loaded.tokenizer, str(loaded.checkpoint)


def main(argv: list[str] | None = None) -> None:
    lm_eval_cli.main(argv, checkpoint_loader=load)


if __name__ == "__main__":
    main()

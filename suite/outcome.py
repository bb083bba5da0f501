"""How a run ended: the status names every layer shares (training writes them, tables read them)
and the rule that tells a run that learned from one that did not.

- finished: ran to its last step and learned something;
- failed_to_learn: ran to its last step, but its final validation loss stayed within FAILED_MARGIN
  of the unigram cross-entropy of its training tokens (what a model that ignores the context
  reaches: deep Post-LN at ordinary learning rates; the paper's Post-LN loss of 7.46 reads so);
- diverged: a non-finite loss, or a loss above the divergence threshold (suite/diagnostics.py);
- interrupted: stopped by a signal with a checkpoint saved, to be resumed.
Finished and failed-to-learn runs are results (their numbers enter the tables, the failures are
counted beside them); diverged runs are results too, counted and never averaged.
"""

from __future__ import annotations

FINISHED = "finished"
FAILED_TO_LEARN = "failed_to_learn"
DIVERGED = "diverged"
INTERRUPTED = "interrupted"
USED = (FINISHED, FAILED_TO_LEARN)  # statuses whose numbers enter means

# ours: "near" the unigram cross-entropy = above 95% of it. A model that learned only the token
# frequencies sits at 100%; one that uses the context at all gets well below (GPT-2 small reaches
# ~45% of the unigram CE of its tokens on web text).
FAILED_MARGIN = 0.05
# ours: a run shorter than this is too short to judge (a 20-step smoke test is still near its start)
FAILED_MIN_STEPS = 100


def failed_to_learn(val_loss: float | None, unigram_ce: float | None, steps: int) -> bool:
    """Whether a run of `steps` steps ended with a validation loss within FAILED_MARGIN of the
    unigram cross-entropy of its training tokens."""
    if val_loss is None or unigram_ce is None or not unigram_ce > 0 or steps < FAILED_MIN_STEPS:
        return False
    return val_loss >= (1.0 - FAILED_MARGIN) * unigram_ce


RULE = (f"failed to learn = after >= {FAILED_MIN_STEPS} steps, a final validation loss >= "
        f"{1 - FAILED_MARGIN:.0%} of the unigram cross-entropy of the training tokens (ours)")

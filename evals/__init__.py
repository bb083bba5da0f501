"""lm-eval integration (the only package that imports lm_eval): the `periln` LM adapter
(evals.adapter), the task table (evals.tasks), offline task data (evals.data) and scoring
(evals.run.evaluate). It scores a model and a tokenizer and imports nothing of suite/: reading a
training checkpoint is the suite's job (suite.checkpoint, suite.evaluate)."""


def __getattr__(name: str):
    # lazy: importing evals (e.g. for evals.tasks in the tables code) does not load lm_eval
    if name == "evaluate":
        from evals import run

        return run.evaluate
    raise AttributeError(f"module 'evals' has no attribute {name!r}")

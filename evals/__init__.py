"""lm-eval integration (the only package that imports lm_eval): the `periln` LM adapter
(evals.adapter), the task table (evals.tasks), offline task data (evals.data), scoring a
checkpoint (evals.run.evaluate_checkpoint) and synthetic benchmarks (evals.synthetic_tasks)."""


def __getattr__(name: str):
    # lazy: importing evals (e.g. for evals.tasks in the tables code) does not load lm_eval
    if name in ("evaluate", "evaluate_checkpoint"):
        from evals import run

        return getattr(run, name)
    raise AttributeError(f"module 'evals' has no attribute {name!r}")

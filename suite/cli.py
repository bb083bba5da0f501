"""`periln`: one console script, one verb per journey. Errors in user input print one line per
problem ("periln: error: ...") and exit 2; a traceback means a bug."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from models import ConfigError
from suite import cost
from suite.config import at_least

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str, help: str, example: str) -> Callable:
    """Register a verb: the decorated function adds its arguments to the parser it is given and
    returns the handler."""

    def wrap(setup: Callable[[argparse.ArgumentParser], Handler]) -> Callable:
        COMMANDS[name] = (help, example, setup)
        return setup

    return wrap


@command("train", "train one run in this process (CPU or GPU)",
         "periln train --config sweeps/train_tiny.yaml train.max_steps=100 placement=peri_ln")
def _train(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--config", help="run config YAML (RunConfig fields); omitted: built-in defaults")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. lr=3e-3")

    def run(args: argparse.Namespace) -> int:
        from suite.config import load_run_config
        from suite.train import Interrupted, train

        cfg = load_run_config(args.config, args.overrides)
        try:
            result = train(cfg)
        except Interrupted as err:  # SIGTERM: saved at a step boundary; the same command resumes
            print(f"periln: {cfg.key}: {err}; run the same command again to resume "
                  f"(run directory {cfg.run_dir})", file=sys.stderr)
            return 143  # 128 + SIGTERM, as a shell reports a process the signal ended
        # a diverged run (suite/diagnostics.py) is a result, not an error: say so, exit 0
        status = (f"DIVERGED at step {result['diverged_step']} ({result['diverged_reason']}); "
                  if result.get("status") == "diverged" else "")
        val = "-" if result["val_loss"] is None else f"{result['val_loss']:.4f}"
        if result.get("val_bpb") is not None:
            val += f" ({result['val_bpb']:.4f} bits/byte)"
        print(f"{result['key']}: {status}step {result['step']}, train loss {result['train_loss']:.4f}, "
              f"val loss {val}, {result['tokens_per_s'] or 0:,.0f} tokens/s; "
              f"run directory {cfg.run_dir}")
        return 0

    return run


@command("demo", "the end-to-end demo: smoke sweep, MLflow, offline evals, tables and figures "
         "(CPU, no internet)", "periln demo --out results/demo")
def _demo(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--out", default="results/demo", help="the demo's folder: runs, store, tables, figures")
    p.add_argument("--sweep", default=None, help="sweep file (default sweeps/smoke.yaml)")
    p.add_argument("--only", action="append", default=[], metavar="field=value",
                   help="only the matching cells (repeatable), e.g. --only seed=0")
    p.add_argument("--eval-limit", type=at_least(1), default=100,
                   help="benchmark items per task (default 100)")
    p.add_argument("--parallel", type=at_least(1), help="cells at a time (default: one per CPU core)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings for every cell, e.g. train.max_steps=50")

    def run(args: argparse.Namespace) -> int:
        from suite.demo import SMOKE, run_demo, summary

        result = run_demo(args.out, args.sweep or SMOKE, args.overrides, args.only, args.eval_limit,
                          parallel=args.parallel, say=lambda line: print(line, flush=True))
        print(summary(result))
        return 1 if result["errors"] else 0

    return run


@command("placements", "list the registered placements with their equations", "periln placements")
def _placements(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--markdown", action="store_true", help="a Markdown table (the README's)")

    def run(args: argparse.Namespace) -> int:
        from models.placements import load_all

        registry = load_all()
        if args.markdown:
            print("| placement | equation | source |\n|---|---|---|")
        for name, cls in sorted(registry.items()):
            alias = f" (alias of {cls.name})" if name != cls.name else ""
            if args.markdown:
                print(f"| `{name}`{alias} | {cls.equation()} | {cls.source} |")
            else:
                print(f"{name}{alias}\n    {cls.equation()}\n    source: {cls.source}")
        return 0

    return run


@command("sizes", "the model sizes with their dimensions and parameter counts", "periln sizes")
def _sizes(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--vocab", type=at_least(1), default=cost.KNOWN_VOCAB[cost.CL100K],
                   help="vocabulary for the total (cl100k_base)")

    def run(args: argparse.Namespace) -> int:
        from models import SIZES, ModelConfig
        from models.sizes import NOMINAL
        from models.transformer import Transformer

        print("Dimensions are ours: the paper publishes only the parameter counts. Non-embedding = "
              "without token embedding and LM head (pre_ln, untied).")
        print(f"{'size':<10}{'d_model':>8}{'layers':>7}{'heads':>6}{'d_ff':>6}{'non-emb':>10}"
              f"{'nominal':>9}{'off':>7}{'total':>10}")
        for name, dims in SIZES.items():
            cfg = ModelConfig(vocab_size=args.vocab, **dims)
            with _meta_device():
                model = Transformer(cfg)
            n, total = model.num_params(True), model.num_params(False)
            nominal = NOMINAL[name]
            off = f"{(n / nominal - 1) * 100:+.1f}%" if nominal else "-"
            print(f"{name:<10}{cfg.d_model:>8}{cfg.n_layers:>7}{cfg.n_heads:>6}{cfg.ff_dim:>6}"
                  f"{_human(n):>10}{_human(nominal) if nominal else '-':>9}{off:>7}{_human(total):>10}")
        return 0

    return run


# ------------------------------------------------------------- downstream tasks (evals/, lm-eval)

@command("eval", "score a checkpoint on ARC, HellaSwag, PIQA, SIQA, Winogrande with lm-eval "
         "(scores to <run_dir>/eval.json)",
         "periln eval runs/default/peri_ln-tiny-lr0.001-s0 --limit 50 --data-dir data/benchmarks/")
def _eval(p: argparse.ArgumentParser) -> Handler:
    from suite.evaluate import add_eval_arguments, run_eval

    add_eval_arguments(p)
    return run_eval


@command("export-hf", "write a run as a transformers model folder (safetensors, config.json, tokenizer) "
         "that AutoModelForCausalLM loads without this project",
         "periln export-hf runs/default/peri_ln-tiny-lr0.001-s0 --out hf/peri_ln-tiny")
def _export_hf(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("target", metavar="RUN_KEY|RUN_DIR|CHECKPOINT",
                   help="a .ckpt file, a run directory (uses checkpoints/last.ckpt), or a run key "
                        "looked up under <out-dir>/<sweep>/<key> (as for periln eval)")
    p.add_argument("--out", required=True, metavar="DIR", help="the model folder to write (new or empty)")
    p.add_argument("--tokenizer", help="tokenizer files to write instead of the run's: a spec (byte, "
                   "files:<dir>, ...) or a folder")
    p.add_argument("--prefix-eot", action="store_true",
                   help="the exported tokenizer puts the end-of-text token before every text, as "
                        "periln eval does for suite-trained models (default: it adds nothing)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--out-dir", default="runs", help="where run keys are looked up (default runs)")
    p.add_argument("--sweep", help="the sweep of a run key found in several")

    def run(args: argparse.Namespace) -> int:
        from suite.hf import export_hf

        out = export_hf(args.target, args.out, args.tokenizer, prefix_eot=args.prefix_eot,
                        overwrite=args.overwrite, runs_dir=args.out_dir, sweep=args.sweep)
        print(f"{out.architecture} in {out.folder} (tokenizer {out.tokenizer or 'none'}); its logits differ "
              f"from the suite model's by at most {out.max_abs_diff:.2g} (fp32, random tokens)")
        for note in out.notes:
            print(f"  {note}")
        return 0

    return run


@command("data", "task data: fetch the evaluation sets from the hub, or write synthetic ones",
         "periln data fetch-benchmarks data/benchmarks/")
def _data(p: argparse.ArgumentParser) -> Handler:
    from suite.evaluate import add_data_arguments, run_data

    add_data_arguments(p)
    return run_data


# ------------------------------------------------------- sweeps: plan, submit, status (suite/launch.py)

def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", metavar="SWEEP", help="sweep file, e.g. sweeps/smoke.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings for every cell, right after SWEEP, e.g. out_dir=/scratch/runs")


@command("plan", "a sweep's cells, counts per axis and cost (tokens, GPU-hours)",
         "periln plan sweeps/paper.yaml --mfu 0.4")
def _plan(p: argparse.ArgumentParser) -> Handler:
    _sweep_args(p)
    p.add_argument("--only", action="append", default=[], metavar="field=value",
                   help="only the matching cells (repeatable), e.g. --only size=400m")
    p.add_argument("--mfu", type=float, default=None,
                   help=f"model FLOPs utilization (default {cost.DEFAULT_MFU:g}: ours)")
    peak = cost.HOPPER_SXM_DENSE_16BIT / 1e12
    p.add_argument("--peak-tflops", type=float, default=peak,
                   help=f"peak dense TFLOP/s per GPU (default {peak:g}: H100 SXM bf16)")

    def run(args: argparse.Namespace) -> int:
        from suite.sweep import format_plan, load_sweep

        sweep = load_sweep(args.sweep, args.overrides)
        print(format_plan(sweep, sweep.select(args.only), args.mfu or cost.DEFAULT_MFU,
                          args.peak_tflops * 1e12))
        return 0

    return run


@command("submit", "submit a sweep's unfinished cells (local | debug | slurm), recorded in MLflow",
         "periln submit sweeps/paper.yaml --executor slurm --profile slurm/profiles/example.yaml")
def _submit(p: argparse.ArgumentParser) -> Handler:
    _sweep_args(p)
    p.add_argument("--executor", default="local", help="local (this machine, default), debug "
                   "(in this process) or slurm (one job array)")
    p.add_argument("--profile", help="submitit parameters, e.g. slurm/profiles/local.yaml")
    p.add_argument("--only", action="append", default=[], metavar="field=value",
                   help="only the matching cells (repeatable), e.g. --only placement=peri_ln")
    p.add_argument("--dry-run", action="store_true",
                   help="show what would be submitted (and the sbatch script); submit nothing")
    p.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else "
                   "sqlite <out_dir>/mlflow.db)")
    p.add_argument("--parallel", type=at_least(1),
                   help="local: cells at a time (default: CPUs / cpus_per_task)")
    p.add_argument("--wait", action="store_true", help="slurm: wait until every job has ended")
    p.add_argument("--deadline", type=float, metavar="SECONDS",
                   help="local: launch no cell that cannot end within SECONDS of the start (its time "
                   "estimated from the cells that ended); running cells end; the rest stay queued")
    _best_lr_args(p)

    def run(args: argparse.Namespace) -> int:
        import time

        from suite import tracking
        from suite.launch import cell_states, clock, submit, wait
        from suite.sweep import load_sweep

        sweep = _best_lr_sweep(load_sweep(args.sweep, args.overrides), args)
        if args.deadline is not None and not args.deadline > 0:
            raise ConfigError(f"--deadline {args.deadline:g}: expected seconds > 0")
        t0 = time.perf_counter()
        sub = submit(sweep, args.executor, args.profile, args.only, args.dry_run, args.tracking_uri,
                     parallel=args.parallel, deadline_s=args.deadline,
                     progress=lambda line: print(f"[{clock(time.perf_counter() - t0)}] {line}", flush=True))
        for key, why in sub.plan.skip.items():
            print(f"skip   {key}: {why}")
        for cell in sub.plan.submit:
            what = "resume" if cell.key in sub.plan.resume else "new   "
            job = f"  (job {sub.job_ids[cell.key]})" if cell.key in sub.job_ids else ""
            print(f"{what} {cell.key}{job}")
        finished = sum(why in tracking.DONE for why in sub.plan.skip.values())
        others = len(sub.plan.skip) - finished
        if args.dry_run:
            print(f"dry run: would submit {len(sub.plan.submit)} cells ({len(sub.plan.resume)} resumed), "
                  f"{finished} already finished, {others} skipped (queued or running); nothing "
                  f"recorded in {tracking.redact(sub.tracking_uri)}")
        else:
            late = f", {len(sub.not_started)} not started (deadline)" if sub.not_started else ""
            print(f"{len(sub.plan.submit)} submitted, {finished} already finished, {others} skipped"
                  f"{late} in {sub.seconds:.2f} s; MLflow store {tracking.redact(sub.tracking_uri)}")
        if sub.experiment_id is not None:
            ui = tracking.ui_address(sub.tracking_uri)
            how = "" if ui == sub.tracking_uri else (
                f" (start the UI: periln mlflow-ui {' '.join([args.sweep, *args.overrides])})")
            print(f"MLflow runs: {tracking.redact(tracking.runs_url(ui, sub.experiment_id))}{how}")
        if args.dry_run:
            if sub.script:
                print(f"--- sbatch script (dry run, in {sub.folder}) ---\n{sub.script}")
            return 0
        if args.executor == "slurm":
            if args.wait and sub.job_ids:
                wait(sub)
                counts: dict[str, int] = {}
                for r in cell_states(sweep, args.tracking_uri):
                    counts[r.state] = counts.get(r.state, 0) + 1
                print("jobs ended; cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
                return 1 if counts.get("failed") else 0
            if sub.job_ids:
                print(f"follow with: periln status {' '.join([args.sweep, *args.overrides])}")
            return 0
        return 1 if sub.errors else 0

    return run


def _best_lr_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--best-lr-from", nargs="?", const="", metavar="SEARCH",
                   help="the cells: each (placement, size) at the best lr of its study (periln search); "
                   "SEARCH: the search's sweep file (default: SWEEP itself) or its journal file")
    p.add_argument("--seeds", type=at_least(1), metavar="N", help="with --best-lr-from: seeds 0..N-1 "
                   "(default: the sweep's seeds)")


def _best_lr_sweep(sweep, args: argparse.Namespace):
    """The sweep with its cells replaced by the seed cells at the best lrs (suite.search)."""
    if args.best_lr_from is None:
        if args.seeds is not None:
            raise ConfigError("--seeds N goes with --best-lr-from (seeds at the best lr of a search)")
        return sweep
    import dataclasses

    from suite.search import seed_cells
    from suite.sweep import load_sweep

    source = args.best_lr_from or args.sweep
    if source.endswith((".yaml", ".yml")):
        source = sweep if source == args.sweep else load_sweep(source, args.overrides)
    seeds = list(range(args.seeds)) if args.seeds is not None else None
    if seeds is not None and not seeds:
        raise ConfigError("--seeds: expected N >= 1")
    return dataclasses.replace(sweep, cells=tuple(seed_cells(sweep, source, seeds)))


@command("search", "tune the learning rate: one Optuna study per (placement, size), K workers "
         "(local | debug | slurm)", "periln search sweeps/search_smoke.yaml --workers 2")
def _search(p: argparse.ArgumentParser) -> Handler:
    _sweep_args(p)
    p.add_argument("--executor", default="local", help="local (this machine, default), debug "
                   "(in this process) or slurm (one job array of K workers)")
    p.add_argument("--profile", help="submitit parameters, e.g. slurm/profiles/local.yaml")
    p.add_argument("--workers", type=at_least(1), metavar="K", help="worker jobs pulling trials (default: "
                   "the sweep's search.workers)")
    p.add_argument("--only", action="append", default=[], metavar="field=value",
                   help="only the studies of the matching cells, e.g. --only placement=peri_ln")
    p.add_argument("--tracking-uri", help="MLflow store (default as for submit)")
    p.add_argument("--out", help="folder for search.csv and the plots (default results/<sweep name>/)")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the workers, then report")
    p.add_argument("--report", action="store_true",
                   help="start nothing: write search.csv and the plots from the studies as they are")

    def run(args: argparse.Namespace) -> int:
        import time
        from pathlib import Path

        from suite import search
        from suite.launch import wait
        from suite.sweep import load_sweep

        start = time.perf_counter()
        sweep = load_sweep(args.sweep, args.overrides)
        out = args.out or f"results/{sweep.name}"
        ran = None
        if not args.report:
            ran = search.search(sweep, args.executor, args.profile, args.workers, args.only,
                                args.tracking_uri, progress=print)
            if ran.workers == 0:
                print("nothing to run: every trial has ended or is running")
            if args.executor == "slurm" and ran.submission is not None:
                print(f"storage {ran.storage}; follow with: periln search {args.sweep} --report")
                if not args.wait:
                    return 0
                wait(ran.submission)
        table, files = search.report(sweep, out)
        for line in search.summary(sweep):
            print(line)
        if ran is not None:
            print(f"search wall time {time.perf_counter() - start:.1f} s ({ran.workers} workers, "
                  f"{args.executor}); storage {ran.storage}")
        print(f"{len(table)} trials in {Path(out) / 'search.csv'}; plots in {Path(out) / 'search'}/")
        errors = ran.submission.errors if ran is not None and ran.submission is not None else {}
        return 1 if errors else 0

    return run


@command("status", "one row per cell: state, step, last loss, job id (exit 1 if any failed)",
         "periln status sweeps/smoke.yaml")
def _status(p: argparse.ArgumentParser) -> Handler:
    _sweep_args(p)
    p.add_argument("--tracking-uri", help="MLflow store (default as for submit)")
    _best_lr_args(p)

    def run(args: argparse.Namespace) -> int:
        from suite.launch import cell_states
        from suite.sweep import load_sweep

        sweep = _best_lr_sweep(load_sweep(args.sweep, args.overrides), args)
        rows = cell_states(sweep, args.tracking_uri)
        width = max(len(r.key) for r in rows) + 2
        print(f"{'cell':<{width}}{'state':<13}{'step':>7}{'loss':>9}  job")
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
            loss = f"{r.loss:.4f}" if r.loss is not None else "-"
            step = r.step if r.step is not None else "-"
            note = f"  {r.note}" if r.note else ""
            print(f"{r.key:<{width}}{r.state:<13}{step:>7}{loss:>9}  {r.job_id or '-'}{note}")
        print(f"{len(rows)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        return 1 if counts.get("failed") else 0

    return run


@command("mlflow-ui", "start the MLflow UI (mlflow server) on 127.0.0.1 over a sweep's store",
         "periln mlflow-ui sweeps/smoke.yaml --port 5000")
def _mlflow_ui(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("sweep", nargs="?", metavar="SWEEP", help="sweep file whose out_dir holds the store")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="as for submit, e.g. out_dir=runs/x")
    p.add_argument("--out", default="runs", help="results directory without a SWEEP (default runs)")
    p.add_argument("--tracking-uri", help="store URI (default: MLFLOW_TRACKING_URI, else sqlite)")
    p.add_argument("--port", type=at_least(1), default=5000)

    def run(args: argparse.Namespace) -> int:
        import os

        from suite import tracking
        from suite.launch import mlflow_server_command
        from suite.sweep import load_sweep

        sweep = load_sweep(args.sweep, args.overrides) if args.sweep else None
        out = sweep.out_dir if sweep else args.out
        cmd, env = mlflow_server_command(out, args.tracking_uri, args.port)
        shown = " ".join(f"{k}={tracking.redact(v)}" for k, v in env.items())
        ui = f"http://127.0.0.1:{args.port}"
        print(f"MLflow UI at {ui} (Ctrl-C stops it):\n  {shown} {' '.join(cmd)}", flush=True)
        if sweep is not None:
            store = tracking.Store(tracking.store_uri(out, args.tracking_uri))
            exp_id = store.experiment_id(sweep.name, create=False)
            print(f"runs of sweep {sweep.name}: " + (tracking.runs_url(ui, exp_id) if exp_id else
                                                      "none yet (periln submit it first)"), flush=True)
        os.execvpe(cmd[0], cmd, {**os.environ, **env})

    return run


@command("tables", "regenerate a sweep's tables and figures from its records (MLflow, or runs.csv)",
         "periln tables sweeps/smoke.yaml --out results/smoke/")
def _tables(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("sweep", nargs="?", metavar="SWEEP", help="sweep file whose MLflow runs are exported "
                   "(omit with --from-csv)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="as given to submit, e.g. out_dir=/scratch/runs (where the store is)")
    p.add_argument("--out", help="folder for runs.csv, curves.csv, tables and figures "
                   "(default results/<sweep name>/; with --from-csv, the CSV's folder)")
    p.add_argument("--from-csv", metavar="RUNS_CSV", help="rebuild from this runs.csv (and the "
                   "curves.csv beside it) without MLflow")
    p.add_argument("--tracking-uri", help="MLflow store (default as for submit)")
    p.add_argument("--commit", help="commit named in the headers (default: the commit the runs recorded)")
    p.add_argument("--reference", help="the paper's numbers (default results/paper_reference.csv)")
    p.add_argument("--no-figures", action="store_true", help="tables only")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from suite.tables import regenerate

        out, sweep, uri = _records_source(args)
        files = regenerate(out, None if args.from_csv else sweep.name, uri, args.from_csv, args.commit,
                           args.reference, figures=not args.no_figures)
        print(f"{len(files)} files in {out}/: " + ", ".join(sorted({f.name for f in files
                                                                     if f.parent == Path(out)})))
        figs = sorted(f.name for f in files if f.parent.name == "figures")
        if figs:
            print(f"figures in {Path(out) / 'figures'}/: {', '.join(figs)}")
        _print_edge_warnings(out)
        return 0

    return run


# ------------------------------------------------------- the report (suite/report.py), offline HTML

def _records_source(args: argparse.Namespace):
    """`periln tables` / `periln report`: (out folder, the sweep if one is given, its MLflow store).
    --from-csv needs no sweep (the report still takes one, for its provenance and tokens)."""
    from pathlib import Path

    sweep, uri = None, None
    if args.sweep:
        from suite.sweep import load_sweep

        sweep = load_sweep(args.sweep, args.overrides)
        if not args.from_csv:
            from suite import tracking

            uri = tracking.store_uri(sweep.out_dir, args.tracking_uri)
    elif not args.from_csv:
        raise ConfigError("give a sweep file (e.g. sweeps/smoke.yaml), or --from-csv runs.csv")
    if args.out:
        return args.out, sweep, uri
    return (str(Path(args.from_csv).parent) if args.from_csv else f"results/{sweep.name}"), sweep, uri


def _print_edge_warnings(out: str) -> None:
    from pathlib import Path

    from suite.analysis import Analysis
    from suite.records import read_runs

    for line in Analysis(read_runs(Path(out) / "runs.csv")).edge_warnings():
        print(f"warning: {line}")


@command("report", "one self-contained offline HTML report of a sweep (tables, claims, figures, "
         "the paper, provenance)", "periln report sweeps/smoke.yaml --out results/smoke/")
def _report(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("sweep", nargs="?", metavar="SWEEP", help="sweep file whose MLflow runs are exported "
                   "(with --from-csv: only for the report's provenance and tokens)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="as given to submit, e.g. out_dir=/scratch/runs (where the store is)")
    p.add_argument("--out", help="folder for report.html (and the tables and figures it is built from; "
                   "default results/<sweep name>/; with --from-csv, the CSV's folder)")
    p.add_argument("--from-csv", metavar="RUNS_CSV", help="build from this runs.csv (and the curves.csv "
                   "beside it) without MLflow")
    p.add_argument("--tracking-uri", help="MLflow store (default as for submit)")
    p.add_argument("--commit", help="commit named as the runs' (default: the commit the runs recorded)")
    p.add_argument("--reference", help="the paper's numbers (default results/paper_reference.csv)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from suite import report
        from suite.tables import regenerate

        out, sweep, uri = _records_source(args)
        files = regenerate(out, None if args.from_csv else sweep.name, uri, args.from_csv, args.commit,
                           args.reference)
        path = report.build(Path(out) / "runs.csv", out, [f for f in files if f.parent.name == "figures"],
                            args.reference, args.commit, sweep)
        _print_edge_warnings(out)
        print(f"report {path} ({path.stat().st_size / 1e3:.0f} kB, self-contained: open it in a browser); "
              f"built with the tables and figures in {out}/")
        return 0

    return run


@command("bench", "throughput, MFU, peak memory and step time of the real training step, per placement",
         "periln bench --size 400m --placements pre_ln peri_ln --seq 2048 --batch 16 --json bench.json")
def _bench(p: argparse.ArgumentParser) -> Handler:
    from suite.bench import add_arguments

    add_arguments(p)

    def run(args: argparse.Namespace) -> int:
        from suite.bench import run as bench

        return bench(args)

    return run


def _meta_device():
    import torch

    return torch.device("meta")  # shapes only: no memory for the 3.2b weights


def _human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as the suite's other errors: one line (what, and where help is),
    exit 2, instead of the usage block and the message."""

    def error(self, message: str) -> None:
        print(f"periln: error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)


def version() -> str:
    """The installed distribution's version (pyproject.toml), from its metadata."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("periln-suite")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (periln-suite is not installed: pip install -e .)"


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `verb`'s arguments are set up (None: all), because a verb's set-up may
    import heavy modules (Lightning, lm-eval) that the other verbs and `--help` do not need."""
    parser = Parser(prog="periln", description=" ".join(__doc__.split()))
    parser.add_argument("--version", action="version", version=f"periln {version()}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=Parser)
    handlers = {}
    for name, (help, example, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=f"{help}\n\nexample:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if verb is None or name == verb:
            handlers[name] = setup(p)
    parser.set_defaults(_handlers=handlers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return args._handlers[args.verb](args)
    except ConfigError as err:
        for line in str(err).splitlines():
            print(f"periln: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

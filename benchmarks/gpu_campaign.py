"""The GPU campaign: one prepared program that measures the suite's speed and tests the paper's
claims on one GPU, in stages with time budgets, each writing its results as it finishes.

    python benchmarks/gpu_campaign.py --out OUT [--stage all|bench|science] [--data DIR]
                                      [--wheels DIR] [--rehearse] [--bench-budget S] [--science-budget S]

Stages (budgets are the defaults; every value here is ours):
- bench (240 s): `pytest -m gpu`; `periln bench` of 400m Pre-LN and Peri-LN at seq 2048 batch 16
  with the logging + diagnostics overhead; the reference shape (400m with 24 layers, d_ff 2816:
  the hand-written loop's 140k tokens/s on an H100) ; the largest batch for 400m and 1.5b.
- science (360 s): sweeps/mini10.yaml with --parallel 4 and a deadline, then `periln tables`.

Output, flat in OUT (at most 8 files, each under 16 MiB): summary.txt (one line per step and stage),
bench.json (every bench result), tables.md, claims.csv, runs.csv, table1.csv, results.tar.gz (logs,
JSON, figures, curves.csv, the mini10 records). It is rewritten after every step, so a cut at any
moment returns what was done. `--rehearse` runs the same stages at tiny sizes on the CPU (minutes),
which tests/test_campaign.py does on every `make test`.

`--data DIR` holds `corpus/` (JSONL parts) and `tokenizer/gpt2/` (benchmarks/pack_device.sh makes
it); `--wheels DIR` holds wheels the machine lacks, installed into a private folder first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILES, MAX_BYTES = 8, 16 * 2**20  # what one device call returns
KEEP = ("summary.txt", "bench.json", "tables.md", "claims.csv", "runs.csv", "table1.csv")


class Campaign:
    def __init__(self, out: Path, rehearse: bool, env: dict[str, str]) -> None:
        self.out, self.rehearse, self.env = out, rehearse, env
        self.work = out / "work"  # packed into results.tar.gz; never returned loose
        self.work.mkdir(parents=True, exist_ok=True)
        self.bench: list[dict] = []
        self.t0 = time.monotonic()

    def say(self, line: str) -> None:
        stamp = f"[{time.monotonic() - self.t0:6.0f} s] {line}"
        print(stamp, flush=True)
        with (self.out / "summary.txt").open("a") as fh:
            fh.write(stamp + "\n")

    def run(self, name: str, argv: list[str], timeout: float) -> tuple[int, str]:
        """One step as a subprocess with its own time limit; its output goes to work/<name>.log."""
        log = self.work / f"{name}.log"
        if timeout <= 5:
            self.say(f"{name}: skipped (no time left in the stage's budget)")
            return 124, ""
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)
            rc, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            rc = 124
            text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            text += f"\n[timed out after {timeout:.0f} s]"
        log.write_text(text)
        last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
        self.say(f"{name}: rc {rc} in {time.monotonic() - start:.0f} s; {last[:160]}")
        return rc, text

    def bench_step(self, name: str, args: list[str], timeout: float) -> None:
        path = self.work / f"{name}.json"
        rc, _ = self.run(name, [sys.executable, "-m", "suite.cli", "bench", *args, "--json", str(path)],
                         timeout)
        if path.is_file():
            data = json.loads(path.read_text())
            for r in data if isinstance(data, list) else data.get("results", [data]):
                self.bench.append({"step": name, **r})
        else:
            self.bench.append({"step": name, "status": f"no result (rc {rc})"})
        (self.out / "bench.json").write_text(json.dumps(self.bench, indent=1, default=str))
        self.pack()

    def pack(self) -> None:
        """results.tar.gz from work/ (logs, JSON, figures, records), under the size limit."""
        tmp = self.out / ".results.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for p in sorted(self.work.rglob("*")):
                if p.is_file() and p.stat().st_size < MAX_BYTES and ".submitit" not in p.parts \
                        and p.suffix not in (".ckpt", ".bin"):
                    tar.add(p, arcname=str(p.relative_to(self.work)))
        if tmp.stat().st_size > MAX_BYTES:  # logs and figures only, then
            with tarfile.open(tmp, "w:gz") as tar:
                for p in sorted(self.work.rglob("*")):
                    if p.is_file() and p.suffix in (".log", ".json", ".md", ".csv", ".png"):
                        tar.add(p, arcname=str(p.relative_to(self.work)))
        tmp.replace(self.out / "results.tar.gz")

    def finish(self) -> None:
        """Only the returned files stay loose in OUT; work/ goes into the archive."""
        self.pack()
        shutil.rmtree(self.work, ignore_errors=True)
        files = sorted(p.name for p in self.out.iterdir())
        extra = [f for f in files if f not in (*KEEP, "results.tar.gz")]
        for f in extra:
            (self.out / f).unlink()
        big = [p.name for p in self.out.iterdir() if p.stat().st_size > MAX_BYTES]
        self.say(f"output: {len(list(self.out.iterdir()))} files in {self.out}"
                 + (f"; over 16 MiB: {big}" if big else ""))


def stage_bench(c: Campaign, budget: float) -> None:
    end = time.monotonic() + budget
    left = lambda: end - time.monotonic()  # noqa: E731
    if c.rehearse:  # the same steps, tiny: CPU, no compile, a few steps
        common = ["--size", "tiny", "--seq", "64", "--batch", "4", "--steps", "3", "--warmup", "1",
                  "--vocab", "512", "--logger", "csv", "train.compile=false", "train.precision=32"]
        big, bigger, ref = "tiny", "small", ["model.n_layers=2", "model.d_ff=128"]
    else:
        common = ["--size", "400m", "--seq", "2048", "--batch", "16", "--steps", "30", "--warmup", "10"]
        big, bigger, ref = "400m", "1.5b", ["model.n_layers=24", "model.d_ff=2816"]
    c.say("bench: start")
    c.run("pytest_gpu", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
          min(60.0, left()))
    c.bench_step("bench_400m", [*common, "--placements", "pre_ln", "peri_ln", "--overhead"],
                 min(150.0 if not c.rehearse else 120.0, left()))
    c.bench_step("bench_reference_shape", [*common, "--placements", "pre_ln", *ref], min(60.0, left()))
    # on the CPU a batch search never runs out of memory: the rehearsal bounds it by its time limit
    for size in (big, bigger):
        args = [a if a not in ("400m", "tiny") else size for a in common]
        c.bench_step(f"max_batch_{size}", [*args, "--placements", "pre_ln", "--find-max-batch"],
                     min(20.0 if c.rehearse else 90.0, left()))
    pre = [r for r in c.bench if r.get("step") == "bench_400m" and r.get("placement") == "pre_ln"
           and not r.get("bare")]
    peri = [r for r in c.bench if r.get("step") == "bench_400m" and r.get("placement") == "peri_ln"
            and not r.get("bare")]
    if pre and peri and pre[0].get("step_time_s") and peri[0].get("step_time_s"):
        c.say(f"bench: Peri/Pre step time {peri[0]['step_time_s'] / pre[0]['step_time_s']:.3f}")
    c.say(f"bench: done, {len(c.bench)} results in bench.json")


def stage_science(c: Campaign, budget: float, data: Path | None) -> None:
    end = time.monotonic() + budget
    runs, res = c.work / "runs", c.work / "mini10"
    over = [f"out_dir={runs}", f"data.cache_dir={c.work / 'cache'}"]
    if c.rehearse:  # tiny, few steps, the built-in corpus and byte tokens, CPU
        over += ["size=tiny", "data.source=synthetic", "data.tokenizer=byte", "data.synthetic_docs=300",
                 "train.seq_len=32", "train.batch_size=4", "train.max_steps=6", "train.val_every=6",
                 "train.val_batches=1", "train.ckpt_every=6", "diagnostics.every=3", "train.compile=false",
                 "train.precision=32", "data.max_tokens=50000", "data.val_tokens=5000"]
        only = ["--only", "seed=0", "--only", "lr=1e-3"]
    else:
        if data is None:
            c.say("science: skipped (no --data: the corpus and tokenizer are needed)")
            return
        over += [f"data.source={data / 'corpus'}", f"data.tokenizer=files:{data / 'tokenizer' / 'gpt2'}"]
        only = []
    c.say("science: start")
    deadline = max(30.0, budget - 90.0)  # leave time for the tables
    c.run("mini10_submit", [sys.executable, "-m", "suite.cli", "submit", "sweeps/mini10.yaml", *over,
                            *only, "--parallel", "4", "--deadline", f"{deadline:.0f}"],
          end - time.monotonic() - 60)
    c.run("mini10_tables", [sys.executable, "-m", "suite.cli", "tables", "sweeps/mini10.yaml", *over,
                            "--out", str(res)], end - time.monotonic())
    for name in ("tables.md", "claims.csv", "runs.csv", "table1.csv"):
        if (res / name).is_file():
            shutil.copyfile(res / name, c.out / name)
    c.pack()
    c.say("science: done")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the returned files (created; emptied)")
    p.add_argument("--stage", choices=("all", "bench", "science"), default="all")
    p.add_argument("--data", help="folder with corpus/ and tokenizer/gpt2/ (benchmarks/pack_device.sh)")
    p.add_argument("--wheels", help="folder of wheels to install first (no index, into a private folder)")
    p.add_argument("--rehearse", action="store_true", help="tiny sizes on the CPU: the same stages")
    p.add_argument("--bench-budget", type=float, default=240.0, help="seconds for the bench stage")
    p.add_argument("--science-budget", type=float, default=360.0, help="seconds for the science stage")
    args = p.parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ)
    if args.wheels:
        site = Path("/tmp/periln-site")
        wheels = sorted(str(w) for w in Path(args.wheels).glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--target", str(site), *wheels], check=True)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    else:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.rehearse:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a machine with a GPU
    c = Campaign(out, args.rehearse, env)
    c.say(f"campaign: stage {args.stage}{' (rehearsal, CPU)' if args.rehearse else ''}, out {out}")
    try:
        if args.stage in ("all", "bench"):
            stage_bench(c, args.bench_budget)
        if args.stage in ("all", "science"):
            stage_science(c, args.science_budget, Path(args.data).resolve() if args.data else None)
    finally:
        c.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())

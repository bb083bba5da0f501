"""Peak memory and time of the training loss at a 100k vocabulary: the plain path (LM head ->
sliced logits -> fp32 -> F.cross_entropy, what suite/train.py did before models/loss.py) against the
chunked linear + cross-entropy (models.loss.linear_cross_entropy), forward + backward.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loss_memory.py            # CPU
    PYTHONPATH=$PWD .venv/bin/python benchmarks/loss_memory.py --rows 32768                 # GPU

On CUDA: bf16 autocast over fp32 weights (as train.precision bf16-mixed), peak from
torch.cuda.max_memory_allocated, time from CUDA events (after a warm-up pass). On CPU: fp32, each
variant in a fresh subprocess, peak = the process's peak resident memory (ru_maxrss) minus its
resident memory once the inputs exist, time = process CPU time of one pass (this machine's wall
clock swings with other load). The gradients of h and W (the same for both) are in the peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from models.loss import default_chunk_rows, linear_cross_entropy


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(method: str, rows: int, d: int, padded: int, vocab: int, chunk_rows: int | None,
        device: str) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    h = (torch.randn(rows, d, device=device, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(padded, d, device=device, generator=g) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (rows,), device=device, generator=g)

    def step() -> float:
        h.grad = w.grad = None
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            if method == "plain":
                logits = F.linear(h, w)[:, :vocab]  # the old path: slice, then fp32 copy
                loss = F.cross_entropy(logits.float(), y)
            else:
                loss = linear_cross_entropy(h, w, y, vocab, chunk_rows=chunk_rows)
        loss.backward()
        return loss.item()

    if device == "cuda":
        step()  # warm-up (cuBLAS handles, allocator)
        torch.cuda.synchronize()
        h.grad = w.grad = None
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        torch.cuda.synchronize()
        return dict(loss=loss, peak_mib=(torch.cuda.max_memory_allocated() - base) / 2**20,
                    ms=start.elapsed_time(end))
    base = rss_mib()
    t0 = time.process_time()
    loss = step()
    ms = (time.process_time() - t0) * 1e3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(loss=loss, peak_mib=peak - base, ms=ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="B*T (default 2048 on CPU, 32768 on CUDA)")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--padded", type=int, default=100352, help="LM-head rows (cl100k padded to 128)")
    ap.add_argument("--vocab", type=int, default=100277, help="real vocabulary (cl100k_base)")
    ap.add_argument("--chunk-rows", type=int, nargs="*", default=[0, 256],
                    help="chunked variants to run; 0 = the default (~1 GiB fp32 chunks)")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "CHUNK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = a.rows or (32768 if device == "cuda" else 2048)
    if a.child:  # one measurement in this fresh process; print it as JSON
        chunk = int(a.child[1]) or None
        print(json.dumps(one(a.child[0], rows, a.d, a.padded, a.vocab, chunk, device)))
        return
    variants = [("plain", 0)] + [("chunked", c) for c in a.chunk_rows]
    print(f"device {device}, rows (B*T) {rows}, d {a.d}, LM head {a.padded} rows, vocab {a.vocab}, "
          f"{'bf16 autocast' if device == 'cuda' else 'fp32'}; one fp32 (rows, V) tensor = "
          f"{rows * a.padded * 4 / 2**20:.0f} MiB")
    print(f"{'variant':<30} {'loss':>9} {'peak MiB':>9} {'ms':>9}")
    for method, chunk in variants:
        if device == "cuda":
            r = one(method, rows, a.d, a.padded, a.vocab, chunk or None, device)
        else:
            cmd = [sys.executable, __file__, "--rows", str(rows), "--d", str(a.d), "--padded",
                   str(a.padded), "--vocab", str(a.vocab), "--child", method, str(chunk)]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        name = "plain" if method == "plain" else \
            f"chunked ({chunk or default_chunk_rows(rows, a.padded)} rows{'' if chunk else ', default'})"
        print(f"{name:<30} {r['loss']:>9.4f} {r['peak_mib']:>9.0f} {r['ms']:>9.0f}")


if __name__ == "__main__":
    main()

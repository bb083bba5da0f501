"""GPT-2 files tokenized two ways: the `tokenizers` byte-level BPE (the path before) and the tiktoken
Encoding suite/tokenizer.py now builds from the same encoder.json + vocab.bpe. Checks that both give
the same ids on every document, then prints tokens/s per process CPU second (all threads counted;
the wall clock on a shared machine swings) and per wall second, in batches of 256 documents as
suite/data.py's token cache feeds them.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tokenizer_speed.py \\
        --corpus data/corpus --tokenizer data/tokenizer/gpt2 --docs 3000
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from pathlib import Path

from suite.tokenizer import HFTokenizer, TiktokenTokenizer, _gpt2_hf, load_tokenizer

BATCH = 256  # documents per encode_batch call, as suite/data.py


def read_docs(corpus: Path, n: int) -> list[str]:
    docs: list[str] = []
    for part in sorted(corpus.glob("*.jsonl.xz")):
        with lzma.open(part, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line).get("text") or ""
                if text:
                    docs.append(text)
                if len(docs) == n:
                    return docs
    return docs


def encode_all(tok, docs: list[str]) -> tuple[list[list[int]], float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    ids = [x for i in range(0, len(docs), BATCH) for x in tok.encode_batch(docs[i:i + BATCH])]
    return ids, time.process_time() - cpu, time.perf_counter() - wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="folder of *.jsonl.xz parts")
    ap.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/gpt2"),
                    help="folder with encoder.json + vocab.bpe")
    ap.add_argument("--docs", type=int, default=3000)
    a = ap.parse_args()
    docs = read_docs(a.corpus, a.docs)
    if not docs:
        print(f"no documents under {a.corpus}", file=sys.stderr)
        return 2
    spec = f"files:{a.tokenizer}"
    fast = load_tokenizer(spec)
    if not isinstance(fast, TiktokenTokenizer):
        print(f"{spec}: not read by tiktoken (got {type(fast).__name__})", file=sys.stderr)
        return 1
    hf: HFTokenizer = _gpt2_hf(spec, a.tokenizer / "encoder.json", a.tokenizer / "vocab.bpe")
    assert (fast.vocab_size, fast.eot_id) == (hf.vocab_size, hf.eot_id), "vocabulary or end-of-text differ"
    ids_hf, cpu_hf, wall_hf = encode_all(hf, docs)
    ids_tt, cpu_tt, wall_tt = encode_all(fast, docs)
    differ = [i for i, (x, y) in enumerate(zip(ids_hf, ids_tt)) if x != y]
    tokens = sum(map(len, ids_hf))
    print(f"{len(docs)} documents, {sum(map(len, docs)) / 1e6:.1f}M characters, {tokens / 1e6:.2f}M tokens; "
          f"ids identical in {len(docs) - len(differ)}/{len(docs)} documents "
          f"(vocab {fast.vocab_size}, end-of-text {fast.eot_id})")
    print(f"{'path':<22} {'CPU s':>7} {'tok/CPU s':>11} {'wall s':>7} {'tok/wall s':>11}")
    for name, cpu, wall in (("tokenizers (before)", cpu_hf, wall_hf), ("tiktoken (now)", cpu_tt, wall_tt)):
        print(f"{name:<22} {cpu:>7.2f} {tokens / cpu:>11,.0f} {wall:>7.2f} {tokens / wall:>11,.0f}")
    print(f"tiktoken / tokenizers: {cpu_hf / cpu_tt:.2f}x per CPU second, {wall_hf / wall_tt:.2f}x wall")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

"""Training data: sources -> tokens -> a memory-mapped cache -> packed fixed-length windows.

Every source is read once and tokenized once into shards of uint16/uint32 tokens (documents joined
by the tokenizer's end-of-text token) under `<cache_dir>/tokens/<hash>/`; the hash covers everything
that changes the tokens. A cache is written into a temporary folder and renamed into place, so a
crash leaves nothing half-written and parallel runs that race to build it agree.

The order of training windows is a pure function of (seed, sample index), so a run resumed at step
s reads exactly the batches an uninterrupted run would (see StepSampler).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from models import ConfigError
from suite import synthetic
from suite.config import DataConfig, RunConfig
from suite.fastpath import on_cuda
from suite.tokenizer import Tokenizer, load_tokenizer

SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB as uint16) per shard file
FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SYNTHETIC_VAL_SEED = 10**6  # held-out synthetic documents come from a seed no run uses


# ------------------------------------------------------------------------------------ documents

def _files(spec: str) -> list[str]:
    p = Path(spec).expanduser()
    paths = sorted(str(f) for f in p.rglob("*") if f.is_file()) if p.is_dir() else sorted(glob.glob(str(p)))
    if not paths:
        raise ConfigError(f"data source {spec!r}: no such file, directory or glob match; check the "
                          "path (or use 'synthetic' or 'hf:<dataset>')")
    if all(os.path.getsize(p) == 0 for p in paths):
        raise ConfigError(f"data source {spec!r}: every file is empty; no text found")
    return paths


def _builder(paths: list[str], spec: str) -> str:
    kinds = set()
    for path in paths:
        stem = path.removesuffix(".gz").removesuffix(".xz").removesuffix(".bz2").removesuffix(".zst")
        kind = FILE_BUILDERS.get(Path(stem).suffix)
        if kind is None:
            raise ConfigError(f"data source {spec!r}: {path} is not .txt, .jsonl, .json or .parquet "
                              "(optionally .gz/.xz compressed)")
        kinds.add(kind)
    if len(kinds) > 1:
        raise ConfigError(f"data source {spec!r}: mixes file kinds {sorted(kinds)}; use one kind")
    return kinds.pop()


def _read_texts(ds: Iterable[dict], field: str, spec: str) -> Iterator[str]:
    try:
        for row in ds:
            if field not in row:
                raise ConfigError(f"data source {spec!r}: records have no field {field!r} (fields: "
                                  f"{', '.join(row)}); set data.text_field")
            yield row[field]
    except ConfigError:
        raise
    except Exception as err:  # a malformed file surfaces deep inside datasets' readers
        raise ConfigError(f"data source {spec!r}: cannot read its records ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})") from None


def documents(spec: str, cfg: DataConfig, role: str) -> Iterator[str]:
    """Document texts of a source; role 'train' or 'val' picks the split or held-out share."""
    import datasets  # heavy import: only when a real source is read

    if spec == "synthetic":
        seed = 0 if role == "train" else SYNTHETIC_VAL_SEED
        n = cfg.synthetic_docs if role == "train" else max(200, cfg.synthetic_docs // 50)
        yield from synthetic.documents(n, seed)
        return
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        split = cfg.split if role == "train" or spec != cfg.val_source else cfg.val_split
        try:
            ds = datasets.load_dataset(name, config or None, split=split, streaming=cfg.streaming)
        except Exception as err:
            raise ConfigError(f"data source {spec!r}: cannot load split {split!r} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]})") from None
        yield from _read_texts(ds, cfg.text_field, spec)
        return
    paths = _files(spec)
    builder = _builder(paths, spec)
    ds = datasets.load_dataset(builder, data_files=paths, split="train", streaming=True)
    texts = _read_texts(ds, cfg.text_field, spec)
    if cfg.val_source is not None:  # a separate held-out source: this one is used whole
        yield from texts
        return
    every = max(2, round(1 / cfg.val_fraction))  # document i is held out when i % every == 0
    for i, text in enumerate(texts):
        if (i % every == 0) == (role == "val"):
            yield text


# ---------------------------------------------------------------------------------------- cache

def _fingerprint(spec: str, role: str, cfg: DataConfig, tok: Tokenizer) -> str:
    files = []
    if spec != "synthetic" and not spec.startswith("hf:"):
        files = [(p, os.path.getsize(p), int(os.path.getmtime(p))) for p in _files(spec)]
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir", "num_workers")}
    key = dict(settings, spec=spec, role=role, vocab=tok.vocab_size, files=files, synthetic_version=1)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def build_token_cache(spec: str, role: str, cfg: DataConfig, tok: Tokenizer) -> Path:
    """Tokenize `spec` once into <cache_dir>/tokens/<hash>/ (reused when present)."""
    final = Path(cfg.cache_dir) / "tokens" / _fingerprint(spec, role, cfg, tok)
    if (final / "meta.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    limit = cfg.max_tokens if role == "train" else cfg.val_tokens
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=final.parent))
    try:
        shards, buf, total, n_docs = [], [], 0, 0
        counts = np.zeros(tok.vocab_size, dtype=np.int64)  # token frequencies: the unigram CE
        bar = tqdm(desc=f"tokenize {role} {spec} ({tok.spec})", unit="tok", unit_scale=True,
                   total=limit, disable=None)

        def flush() -> None:
            nonlocal buf
            if buf:
                arr = np.concatenate(buf).astype(dtype)
                counts[:] += np.bincount(arr, minlength=tok.vocab_size)[: tok.vocab_size]
                name = f"shard_{len(shards):05d}.bin"
                arr.tofile(tmp / name)
                shards.append({"file": name, "tokens": int(arr.size)})
                buf = []

        pending = 0
        for batch in _batched(documents(spec, cfg, role), 256):
            for ids in tok.encode_batch(batch):
                ids = np.asarray(ids + [tok.eot_id], dtype=np.int64)
                if limit is not None:
                    ids = ids[: limit - total]
                buf.append(ids)
                pending += ids.size
                total += ids.size
                n_docs += 1
                bar.update(ids.size)
                if pending >= SHARD_TOKENS:
                    flush()
                    pending = 0
                if limit is not None and total >= limit:
                    break
            if limit is not None and total >= limit:
                break
        flush()
        bar.close()
        if total == 0:
            raise ConfigError(f"data source {spec!r} ({role}): no text found; check the files and "
                              "data.text_field")
        meta = dict(spec=spec, role=role, tokenizer=tok.spec, vocab_size=tok.vocab_size,
                    dtype=np.dtype(dtype).name, tokens=total, documents=n_docs, shards=shards,
                    unigram_ce=entropy(counts))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same cache first: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def entropy(counts: np.ndarray) -> float:
    """The cross-entropy (nats/token) of the tokens under their own unigram distribution: what a model
    that ignores the context reaches at best (suite.outcome's failed-to-learn rule compares to it)."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_ce(cache: Path) -> float:
    """The unigram cross-entropy of a token cache: recorded in meta.json when the cache was built;
    computed from the shards (and recorded) for a cache built before it was."""
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text())
    if "unigram_ce" not in meta:
        counts = np.zeros(meta["vocab_size"], dtype=np.int64)
        for shard in meta["shards"]:
            ids = np.fromfile(cache / shard["file"], dtype=meta["dtype"])
            counts += np.bincount(ids, minlength=meta["vocab_size"])[: meta["vocab_size"]]
        meta["unigram_ce"] = entropy(counts)
        tmp = meta_path.with_name(f".meta.json.{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)
    return float(meta["unigram_ce"])


def utf8_bytes(cache: Path, tok: Tokenizer) -> int:
    """The UTF-8 bytes of the text a token cache holds (end-of-text tokens are no text: 0 bytes),
    decoded document by document with the cache's tokenizer; counted once, kept in meta.json."""
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text())
    if meta.get("tokenizer") != tok.spec:
        raise ConfigError(f"{cache}: token cache of tokenizer {meta.get('tokenizer')!r}, not {tok.spec!r}")
    if "bytes" not in meta:
        ids = np.concatenate([np.fromfile(cache / s["file"], dtype=meta["dtype"]) for s in meta["shards"]])
        ends = np.flatnonzero(ids == tok.eot_id)
        docs = [d for d in np.split(ids, ends) if d.size]  # each piece after the first starts at an EOT
        texts = [tok.decode([int(i) for i in d if i != tok.eot_id]) for d in docs]
        meta["bytes"] = sum(len(t.encode("utf-8")) for t in texts)
        tmp = meta_path.with_name(f".meta.json.{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, meta_path)
    return int(meta["bytes"])


def bits_per_byte(loss: float, tokens: int, n_bytes: int) -> float:
    """Cross-entropy in nats per token as bits per UTF-8 byte of the same text."""
    return loss * tokens / (n_bytes * math.log(2))


def _batched(it: Iterable[str], n: int) -> Iterator[list[str]]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# -------------------------------------------------------------------------------------- windows

class PackedWindows(Dataset):
    """Non-overlapping windows of seq_len + 1 tokens over the cached shards (windows do not cross
    shard files). Item: int64 tensor (seq_len + 1,) = inputs [:-1] and shifted targets [1:]."""

    def __init__(self, cache: Path, seq_len: int) -> None:
        meta = json.loads((cache / "meta.json").read_text())
        self.meta, self.seq_len = meta, seq_len
        self.shards = [np.memmap(cache / s["file"], dtype=meta["dtype"], mode="r") for s in meta["shards"]]
        counts = [max(0, (s.size - 1) // seq_len) for s in self.shards]
        self.starts = np.cumsum([0] + counts)
        if self.starts[-1] == 0:
            raise ConfigError(f"{meta['spec']} ({meta['role']}): {meta['tokens']} tokens are fewer "
                              f"than one window of {seq_len + 1}; add data or lower train.seq_len")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> torch.Tensor:
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        off = (i - int(self.starts[shard])) * self.seq_len
        return torch.from_numpy(self.shards[shard][off: off + self.seq_len + 1].astype(np.int64))


class StepSampler(Sampler[int]):
    """Window indices for micro-batches `start` .. `total` - 1 of this rank.

    The global sample stream s = 0, 1, 2, ... visits window perm_e[s mod n] with e = s // n and
    perm_e a permutation seeded by (seed, e): a fresh shuffle every epoch, identical for every
    rank count and every restart. Micro-batch m covers samples [m * B * W, (m + 1) * B * W); rank r
    takes its r-th slice of B.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, total: int, rank: int = 0,
                 world: int = 1) -> None:
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.total, self.rank, self.world = start, total, rank, world

    def __len__(self) -> int:
        # NOTE: the whole run's length even when resuming at `start`: Lightning restores its
        # batch counter to `start`, so the epoch then ends exactly at `total`, as uninterrupted.
        return self.total * self.batch

    def __iter__(self) -> Iterator[int]:
        epoch, perm = -1, None
        for m in range(self.start, self.total):
            first = (m * self.world + self.rank) * self.batch
            for s in range(first, first + self.batch):
                if s // self.n != epoch:
                    epoch = s // self.n
                    perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
                yield int(perm[s % self.n])


CUDA_WORKERS = 2  # ours: data.num_workers on a CUDA GPU unless the run sets it


def loader_workers(cfg: RunConfig) -> int:
    """Loader processes: data.num_workers, or by default 0 on CPU (the main process alone delivers
    ~20M tokens/s of 400m batches, README) and CUDA_WORKERS on a GPU, so that loading is not
    serialised behind the step where the host waits on the device (DDP, logging steps)."""
    if cfg.data.num_workers is not None:
        return cfg.data.num_workers
    return CUDA_WORKERS if on_cuda(cfg.train) else 0  # the run's accelerator, not just the machine


class TokenData(L.LightningDataModule):
    """Packed windows of the run's training source, and a fixed held-out set for the val loss."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        self.train_set: PackedWindows | None = None
        self.val_set: PackedWindows | None = None

    def caches(self) -> tuple[Path, Path]:
        d = self.cfg.data
        train = build_token_cache(d.source, "train", d, self.tokenizer)
        val_spec = d.val_source or d.source
        return train, build_token_cache(val_spec, "val", d, self.tokenizer)

    def prepare_data(self) -> None:
        # the windows are checked here, with the caches, so a run too long for its data fails
        # before its directory is written (suite.train writes it after prepare_data)
        seq = self.cfg.train.seq_len
        for cache in self.caches():
            PackedWindows(cache, seq)

    @property
    def unigram_ce(self) -> float:
        """The unigram cross-entropy of the training tokens (nats/token)."""
        return unigram_ce(self.caches()[0])

    @property
    def val_text_size(self) -> tuple[int, int]:
        """(tokens, UTF-8 bytes) of the held-out cache, for val/bpb. Measured over the whole cache,
        of which the val loss reads the first windows (ours: the same text, so the same ratio up to
        sampling)."""
        cache = self.caches()[1]
        tokens = json.loads((cache / "meta.json").read_text())["tokens"]
        return tokens, utf8_bytes(cache, self.tokenizer)

    def setup(self, stage: str | None = None) -> None:
        train, held_out = self.caches()
        seq = self.cfg.train.seq_len
        self.train_set, self.val_set = PackedWindows(train, seq), PackedWindows(held_out, seq)

    def _loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        workers = loader_workers(self.cfg)
        return DataLoader(dataset, batch_size=self.cfg.train.batch_size, sampler=sampler,
                          num_workers=workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    def train_dataloader(self) -> DataLoader:
        t = self.cfg.train
        trainer = self.trainer
        # called after a checkpoint is restored, so global_step is the step to resume from
        step = trainer.global_step if trainer is not None else 0
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = StepSampler(len(self.train_set), t.batch_size, self.cfg.seed,
                              start=step * t.accumulate, total=t.max_steps * t.accumulate,
                              rank=rank, world=world)
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        t = self.cfg.train
        n = min(len(self.val_set), t.val_batches * t.batch_size)
        return self._loader(self.val_set, list(range(n)))

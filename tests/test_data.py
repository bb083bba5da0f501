"""Data: tokenizers, sources, the token cache, held-out split, deterministic sampling."""

import gzip
import json

import numpy as np
import pandas as pd
import pytest

from models import ConfigError
from suite import data as data_mod
from suite import synthetic
from suite.config import DataConfig, load_run_config
from suite.data import PackedWindows, StepSampler, TokenData, build_token_cache
from suite.tokenizer import load_tokenizer

TEXTS = ["Hello world, the quick brown fox.", "Ünïcödé and emoji 🎉 survive.", "line one\nline two"]


def test_byte_tokenizer_round_trip():
    tok = load_tokenizer("byte")
    ids = tok.encode_batch(TEXTS)
    assert ids[0][:5] == list(b"Hello")
    assert [tok.decode(i) for i in ids] == TEXTS


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A small byte-level BPE trained here, saved both as tokenizer.json and GPT-2 style files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(synthetic.documents(500, 0) + TEXTS, trainer)
    root = tmp_path_factory.mktemp("bpe")
    (root / "json").mkdir()
    tok.save(str(root / "json" / "tokenizer.json"))
    (root / "gpt2").mkdir()
    tok.model.save(str(root / "gpt2"))  # vocab.json + merges.txt
    return root


@pytest.mark.parametrize("layout", ["json", "gpt2"])
def test_local_bpe_files_round_trip(bpe_dir, layout):
    tok = load_tokenizer(f"files:{bpe_dir / layout}")
    ids = tok.encode_batch(TEXTS)
    assert [tok.decode(i) for i in ids] == TEXTS
    assert len(ids[0]) < len(TEXTS[0].encode())  # merges were applied
    assert tok.eot_id == 0 and tok.vocab_size == 400


@pytest.mark.parametrize("spec, fragment", [
    ("files:/nonexistent/dir", "not found"),
    ("wordpiece", "unknown spec"),
])
def test_bad_tokenizer_is_a_clear_error(spec, fragment):
    load_tokenizer.cache_clear()
    with pytest.raises(ConfigError, match=fragment):
        load_tokenizer(spec)


def test_unreadable_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokenizer(f"files:{tmp_path}")


def test_synthetic_corpus_is_deterministic_and_seeded():
    assert synthetic.documents(20, 3) == synthetic.documents(20, 3)
    assert synthetic.documents(20, 3) != synthetic.documents(20, 4)


def write_sources(root, docs):
    (root / "txt").mkdir()
    (root / "txt" / "a.txt").write_text("\n".join(docs))
    with gzip.open(root / "docs.jsonl.gz", "wt") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "body": d}) + "\n")
    pd.DataFrame({"text": docs}).to_parquet(root / "docs.parquet")


def test_local_files_train_and_held_out_split(tmp_path):
    docs = [f"document number {i} says hello." for i in range(100)]
    write_sources(tmp_path, docs)
    tok = load_tokenizer("byte")
    cfg = DataConfig(source=str(tmp_path / "docs.jsonl.gz"), text_field="body", val_fraction=0.1,
                     cache_dir=str(tmp_path / "cache"))
    train = PackedWindows(build_token_cache(cfg.source, "train", cfg, tok), 16)
    held = PackedWindows(build_token_cache(cfg.source, "val", cfg, tok), 16)
    def text(w):
        return bytes(t for t in np.concatenate([np.asarray(s) for s in w.shards]) if t < 256).decode()

    held_docs = {f"document number {i} says hello." for i in range(0, 100, 10)}
    assert all(d in text(held) for d in held_docs)
    assert not any(d in text(train) for d in held_docs)
    assert train.meta["documents"] == 90 and held.meta["documents"] == 10
    # every document plus its end-of-text token
    assert train.meta["tokens"] == sum(len(d) + 1 for i, d in enumerate(docs) if i % 10)


@pytest.mark.parametrize("name, field", [("txt", "text"), ("docs.parquet", "text")])
def test_text_and_parquet_sources(tmp_path, name, field):
    docs = [f"row {i}" for i in range(30)]
    write_sources(tmp_path, docs)
    cfg = DataConfig(source=str(tmp_path / name), val_source=str(tmp_path / name),
                     cache_dir=str(tmp_path / "cache"))
    cache = build_token_cache(cfg.source, "train", cfg, load_tokenizer("byte"))
    assert json.loads((cache / "meta.json").read_text())["documents"] == 30


def test_cache_is_built_once_then_reused(tmp_path, monkeypatch):
    cfg = DataConfig(synthetic_docs=300, cache_dir=str(tmp_path))
    tok = load_tokenizer("byte")
    first = build_token_cache("synthetic", "train", cfg, tok)

    def fail(*a, **k):
        raise AssertionError("re-tokenized")

    monkeypatch.setattr(data_mod, "documents", fail)
    assert build_token_cache("synthetic", "train", cfg, tok) == first
    assert not list(tmp_path.glob("tokens/.building-*"))  # nothing half-written left behind


@pytest.mark.parametrize("content, fragment", [
    ("", "every file is empty"),
    ('{"text": "fine"}\n{"text": broken json\n', "cannot read its records"),
    ('{"body": "no text field"}\n', "no field 'text'"),
])
def test_bad_file_fails_clearly_and_leaves_no_cache(tmp_path, content, fragment):
    (tmp_path / "bad.jsonl").write_text(content)
    cfg = DataConfig(source=str(tmp_path / "bad.jsonl"), cache_dir=str(tmp_path / "c"))
    with pytest.raises(ConfigError, match=fragment) as err:
        build_token_cache(cfg.source, "train", cfg, load_tokenizer("byte"))
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "c").rglob("*.bin"))  # nothing half-written


def test_step_sampler_is_a_seeded_permutation_split_by_rank():
    one = list(StepSampler(n=10, batch=4, seed=7, start=0, total=5))
    assert sorted(one[:10]) == list(range(10)) and sorted(one[10:20]) == list(range(10))
    assert one == list(StepSampler(n=10, batch=4, seed=7, start=0, total=5))
    assert one != list(StepSampler(n=10, batch=4, seed=8, start=0, total=5))
    # resuming at micro-batch 2 continues the same stream
    assert list(StepSampler(n=10, batch=4, seed=7, start=2, total=5)) == one[8:]
    # two ranks with batch 2 split each global batch of 4 in order
    r0 = list(StepSampler(n=10, batch=2, seed=7, start=0, total=5, rank=0, world=2))
    r1 = list(StepSampler(n=10, batch=2, seed=7, start=0, total=5, rank=1, world=2))
    merged = [x for m in range(5) for x in r0[2 * m:2 * m + 2] + r1[2 * m:2 * m + 2]]
    assert merged == one


def test_windows_are_shifted_targets(tmp_path):
    cfg = load_run_config(None, [f"data.cache_dir={tmp_path}", "data.synthetic_docs=200",
                                 "train.seq_len=32"])
    dm = TokenData(cfg)
    dm.setup()
    w0, w1 = dm.train_set[0], dm.train_set[1]
    assert w0.shape == (33,) and w0[-1] == w1[0]  # windows overlap by the one target token


def test_missing_data_file_is_a_clear_error(tmp_path):
    cfg = DataConfig(source=str(tmp_path / "nope.jsonl"), cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="no such file"):
        build_token_cache(cfg.source, "train", cfg, load_tokenizer("byte"))


def test_utf8_bytes_of_a_cache_by_hand(tmp_path):
    """Byte tokenizer on "ab", "café", "日本": 2 + 5 + 6 = 13 bytes of text in 13 + 3 (end-of-text)
    = 16 tokens; the count is kept in meta.json (a second call reads it)."""
    (tmp_path / "val.txt").write_text("ab\ncafé\n日本")
    cfg = DataConfig(source=str(tmp_path / "val.txt"), val_source=str(tmp_path / "val.txt"),
                     cache_dir=str(tmp_path / "cache"))
    tok = load_tokenizer("byte")
    cache = build_token_cache(cfg.val_source, "val", cfg, tok)
    assert json.loads((cache / "meta.json").read_text())["tokens"] == 16
    assert data_mod.utf8_bytes(cache, tok) == 13
    assert json.loads((cache / "meta.json").read_text())["bytes"] == 13
    # a loss of 2 nats/token over 16 tokens is 32 nats = 32 / ln 2 bits over 13 bytes
    assert data_mod.bits_per_byte(2.0, 16, 13) == pytest.approx(32 / (13 * np.log(2)))
    with pytest.raises(ConfigError, match="not 'tiktoken:gpt2'"):
        data_mod.utf8_bytes(cache, type("T", (), {"spec": "tiktoken:gpt2"})())


@pytest.mark.parametrize("layout", ["json", "gpt2"])
def test_utf8_bytes_with_a_bpe_are_the_texts_bytes(bpe_dir, layout, tmp_path):
    tok = load_tokenizer(f"files:{bpe_dir / layout}")
    (tmp_path / "val.txt").write_text("\n".join(TEXTS))
    cfg = DataConfig(source=str(tmp_path / "val.txt"), val_source=str(tmp_path / "val.txt"),
                     cache_dir=str(tmp_path / "cache"))
    cache = build_token_cache(cfg.val_source, "val", cfg, tok)
    # the txt reader gives one document a line
    lines = "\n".join(TEXTS).split("\n")
    assert data_mod.utf8_bytes(cache, tok) == sum(len(t.encode()) for t in lines)
    tokens = json.loads((cache / "meta.json").read_text())["tokens"]
    assert tokens == sum(len(ids) + 1 for ids in tok.encode_batch(lines))
    assert tokens < sum(len(t.encode()) for t in lines)  # merges: fewer tokens than bytes

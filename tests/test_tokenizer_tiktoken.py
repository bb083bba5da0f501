"""GPT-2 style tokenizer files read by tiktoken (suite/tokenizer.py): the same ids as the
`tokenizers` path on files built here in GPT-2's own layout, and the `tokenizers` path kept for
files whose ids do not follow the merge order. (On the real GPT-2 files and 20,000 Wikipedia
articles: benchmarks/tokenizer_speed.py.)"""

import json

import pytest

from suite import synthetic
from suite.tokenizer import HFTokenizer, TiktokenTokenizer, _gpt2_hf, load_tokenizer

TEXTS = [
    "Hello world! It's 2024, isn't it? We'll see; they've said they'd go.",
    "  leading spaces,\ttabs\nnew lines\n\n\nand trailing   ",
    "Unicode: café, naïve, Zürich, 東京, Ελληνικά, emoji 🙂👍, math ∑x² = 3.14159",
    "numbers 1234567 and 3.5e-8, code: def f(x): return x**2  # done",
    "a literal <|endoftext|> in the text is ordinary text",
]


def gpt2_byte_chars() -> list[str]:
    """GPT-2's bytes_to_unicode (openai/gpt-2 encoder.py), in its order: printable Latin-1 bytes
    stand for themselves, the other 68 bytes for chr(256 + n)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    rest = [b for b in range(256) if b not in bs]
    return [chr(b) for b in bs] + [chr(256 + n) for n in range(len(rest))]


@pytest.fixture(scope="module")
def trained_merges(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(synthetic.documents(800, 0) + TEXTS * 20, trainer)
    d = tmp_path_factory.mktemp("trained")
    tok.model.save(str(d))
    lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]


def write_gpt2_layout(folder, merges, ids_in_merge_order=True):
    """encoder.json + vocab.bpe as GPT-2 ships them: 256 byte tokens, one token per merge in merge
    order, then <|endoftext|>."""
    folder.mkdir()
    tokens = gpt2_byte_chars() + [a + b for a, b in merges]
    if not ids_in_merge_order:  # same vocabulary and merges, ids permuted: tiktoken cannot use it
        tokens = tokens[:256] + tokens[256:][::-1]
    encoder = {t: i for i, t in enumerate(tokens)}
    encoder["<|endoftext|>"] = len(tokens)
    (folder / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    body = "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + body, encoding="utf-8")
    return folder


def test_gpt2_layout_is_read_by_tiktoken_with_the_same_ids(tmp_path, trained_merges):
    d = write_gpt2_layout(tmp_path / "gpt2", trained_merges)
    load_tokenizer.cache_clear()
    fast = load_tokenizer(f"files:{d}")
    assert isinstance(fast, TiktokenTokenizer)
    slow = _gpt2_hf(fast.spec, d / "encoder.json", d / "vocab.bpe")
    n = 256 + len(trained_merges) + 1
    assert (fast.vocab_size, fast.eot_id) == (slow.vocab_size, slow.eot_id) == (n, n - 1)
    texts = TEXTS + synthetic.documents(200, 7)
    ids = fast.encode_batch(texts)
    assert ids == slow.encode_batch(texts)
    assert [fast.decode(i) for i in ids] == texts
    assert sum(map(len, ids[:len(TEXTS)])) < sum(len(t.encode()) for t in TEXTS)  # merges applied
    assert fast.eot_id not in {i for row in ids for i in row}  # a literal <|endoftext|> is text


def test_ids_out_of_merge_order_keep_the_tokenizers_path(tmp_path, trained_merges):
    d = write_gpt2_layout(tmp_path / "permuted", trained_merges, ids_in_merge_order=False)
    load_tokenizer.cache_clear()
    tok = load_tokenizer(f"files:{d}")
    assert isinstance(tok, HFTokenizer)
    assert [tok.decode(i) for i in tok.encode_batch(TEXTS)] == TEXTS

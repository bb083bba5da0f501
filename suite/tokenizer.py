"""Tokenizers behind one small interface, chosen by a spec string:

    byte                  UTF-8 bytes + an end-of-text token (offline fallback, vocab 257)
    tiktoken:<encoding>   tiktoken (cl100k_base as the paper, gpt2); downloads its file once
    hf:<name>             a Hugging Face tokenizer from the hub (tokenizers library)
    files:<dir>           local files: tokenizer.json, or GPT-2 style encoder.json + vocab.bpe
                          (= vocab.json + merges.txt), e.g. data/tokenizer/gpt2

GPT-2 style files are read into a tiktoken Encoding (GPT-2's pre-tokenizer pattern, the files' BPE
ranks) when tiktoken accepts them, i.e. when the token ids follow the merge order: the same ids as
the `tokenizers` byte-level BPE (checked on 2000+ Wikipedia articles, benchmarks/tokenizer_speed.py)
at several times its speed. Otherwise, and for tokenizer.json, the `tokenizers` library.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

from models import ConfigError
from suite.files import suggest


class Tokenizer(Protocol):
    spec: str
    vocab_size: int
    eot_id: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    vocab_size, eot_id = 257, 256

    def __init__(self) -> None:
        self.spec = "byte"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class TiktokenTokenizer:
    def __init__(self, spec: str, enc) -> None:
        self.spec, self.enc = spec, enc
        self.vocab_size, self.eot_id = enc.n_vocab, enc.eot_token

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)


class HFTokenizer:
    """A `tokenizers` tokenizer: from the hub (hf:<name>) or local files (files:<dir>)."""

    EOT_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")

    def __init__(self, spec: str, tok) -> None:
        self.spec, self.tok = spec, tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = [tok.token_to_id(n) for n in self.EOT_NAMES]
        ids = [i for i in ids if i is not None]
        if not ids:
            raise ConfigError(f"tokenizer {spec!r}: no end-of-text token among {self.EOT_NAMES}")
        self.eot_id = ids[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def _named_tiktoken(spec: str, encoding: str) -> TiktokenTokenizer:
    import tiktoken

    known = tiktoken.list_encoding_names()
    if encoding not in known:  # tiktoken's own message is three lines, the useful one first
        raise ConfigError(f"tokenizer {spec!r}: unknown tiktoken encoding {encoding!r}"
                          f"{suggest(encoding, known, n=1, lead='; ')}; known: {', '.join(known)}")
    try:
        return TiktokenTokenizer(spec, tiktoken.get_encoding(encoding))
    except ValueError as err:
        raise ConfigError(f"tokenizer {spec!r}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # network: tiktoken fetches its BPE file on first use
        raise ConfigError(
            f"tokenizer {spec!r}: could not load the encoding ({type(err).__name__}); it is "
            "downloaded once and cached under TIKTOKEN_CACHE_DIR; offline, use files:<dir> or byte"
        ) from None


def _gpt2_tiktoken(spec: str, vocab: Path, merges: Path) -> TiktokenTokenizer | None:
    """GPT-2 style files as a tiktoken Encoding, or None when tiktoken cannot represent them with
    the same ids: its BPE merges by token id, so the ids must follow the merge order (its loader
    asserts it), and every entry of the vocabulary must be a byte sequence or the end-of-text."""
    import hashlib
    import json

    try:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's pre-tokenizer pattern
    except ImportError:
        return None
    encoder = json.loads(vocab.read_text(encoding="utf-8"))
    eot = "<|endoftext|>"
    if eot not in encoder:
        return None
    # tiktoken caches files it reads under their path: the files' hashes keep that cache honest
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (vocab, merges)}
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(vocab), vocab_bpe_hash=digest[merges],
                                                encoder_json_hash=digest[vocab])
    except (AssertionError, KeyError, ValueError, OSError):  # OSError: an unwritable cache dir
        return None
    if len(ranks) + 1 != len(encoder):  # e.g. a <|startoftext|> tiktoken would drop
        return None
    enc = tiktoken.Encoding(name=f"files:{vocab.parent}", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={eot: encoder[eot]})
    return TiktokenTokenizer(spec, enc)


def _gpt2_hf(spec: str, vocab: Path, merges: Path) -> HFTokenizer:
    """GPT-2 style files through the `tokenizers` library (any ids, any merge order)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers

    tok = HFTok(models.BPE.from_file(str(vocab), str(merges)))
    # GPT-2 byte-level BPE: no prefix space, byte-level pre-tokenizer and decoder
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return HFTokenizer(spec, tok)


def _from_files(spec: str, folder: str) -> HFTokenizer | TiktokenTokenizer:
    from tokenizers import Tokenizer as HFTok

    d = Path(folder).expanduser()
    if not d.is_dir():
        raise ConfigError(f"tokenizer {spec!r}: directory {d} not found; give a folder with "
                          "tokenizer.json, or encoder.json + vocab.bpe (vocab.json + merges.txt)")
    try:
        if (d / "tokenizer.json").is_file():
            return HFTokenizer(spec, HFTok.from_file(str(d / "tokenizer.json")))
        for vocab, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
            if (d / vocab).is_file() and (d / merges).is_file():
                return _gpt2_tiktoken(spec, d / vocab, d / merges) or _gpt2_hf(spec, d / vocab, d / merges)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"tokenizer {spec!r}: cannot read the files in {d} ({err}); "
                          "check they are a valid tokenizer") from None
    raise ConfigError(f"tokenizer {spec!r}: {d} has neither tokenizer.json nor encoder.json + "
                      "vocab.bpe nor vocab.json + merges.txt")


def _from_hub(spec: str, name: str) -> HFTokenizer:
    from tokenizers import Tokenizer as HFTok

    try:
        return HFTokenizer(spec, HFTok.from_pretrained(name))
    except Exception as err:
        raise ConfigError(f"tokenizer {spec!r}: cannot load {name!r} from the hub "
                          f"({type(err).__name__}); offline, use files:<dir> or byte") from None


@lru_cache(maxsize=8)
def load_tokenizer(spec: str) -> Tokenizer:
    kind, _, arg = spec.partition(":")
    if spec == "byte":
        return ByteTokenizer()
    if kind == "tiktoken" and arg:
        return _named_tiktoken(spec, arg)
    if kind == "hf" and arg:
        return _from_hub(spec, arg)
    if kind == "files" and arg:
        return _from_files(spec, arg)
    raise ConfigError(f"tokenizer {spec!r}: unknown spec; use byte, tiktoken:<encoding>, "
                      "hf:<name> or files:<dir>")

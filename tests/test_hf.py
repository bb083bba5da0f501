"""Hugging Face export and import (suite/hf.py): the folder a suite model is exported to, loaded by
transformers with no project code, computes the suite's logits (fp32, within 1e-4) on random and
real text tokens; a transformers Llama-family folder loaded into the suite's model computes
transformers' logits; lm-eval's HF backend on the folder gives the suite adapter's accuracies.

Every model has its norm gains moved away from their initial value (a wrong 1 + w mapping shows),
a padded vocabulary, GQA, a non-default RoPE base and eps, and untied embeddings unless a test
says otherwise. Real text is encoded with tokenizers whose files the tests write (a byte-level BPE
trained here, saved in GPT-2's vocab.json + merges.txt form, and a tiktoken encoding built here):
the tests need no download; the GPT-2 files under data/tokenizer/gpt2 are checked when present.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from models import ConfigError, ModelConfig, build_model  # noqa: E402
from models.placements import load_all  # noqa: E402
from suite.hf import FAMILIES, export_hf, load_hf_llama, save_tokenizer  # noqa: E402
from suite.tokenizer import ByteTokenizer, TiktokenTokenizer, load_tokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TOL = 1e-4
TEXT = ("The quick brown fox jumps over the lazy dog. Normalization layers sit before and after "
        "each sub-layer, and the residual stream is left alone.")
CORPUS = [TEXT, "A fox is quick; a dog is lazy.", "Layers normalize the stream of each sub-layer.",
          "The residual stream grows with depth unless something keeps it in check.",
          "Dogs and foxes: the quick, the brown and the lazy ones."]
GPT2_DIR = Path(__file__).resolve().parents[1] / "data" / "tokenizer" / "gpt2"

# (test id, placement, ModelConfig changes, the transformers class it must load as)
ARMS = [
    ("pre_ln", "pre_ln", {}, "LlamaForCausalLM"),
    ("pre_ln-tied", "pre_ln", {"tie_embeddings": True}, "LlamaForCausalLM"),
    ("pre_ln-qk_norm", "pre_ln", {"qk_norm": True}, "Qwen3ForCausalLM"),
    ("pre_ln_embed_norm", "pre_ln_embed_norm", {}, "LlamaForCausalLM"),
    ("olmo2", "olmo2", {}, "Olmo2ForCausalLM"),
    ("peri_ln", "peri_ln", {}, "Gemma2ForCausalLM"),
    ("peri_ln-qk_norm", "peri_ln", {"qk_norm": True}, "Gemma3ForCausalLM"),
    ("peri_ln-tied-no_embed_norm", "peri_ln", {"tie_embeddings": True, "embed_norm": False},
     "Gemma2ForCausalLM"),
    ("gemma", "gemma", {}, "Gemma2ForCausalLM"),
    ("gemma-qk_norm-tied", "gemma", {"qk_norm": True, "tie_embeddings": True}, "Gemma3ForCausalLM"),
]


def suite_model(placement: str, vocab_size: int, seed: int = 0, max_seq_len: int = 64, **changes):
    """A tiny random model whose every norm gain (the only 1-D parameters: no biases) is moved by
    N(0, 0.3) from its initial value."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=96,
                      max_seq_len=max_seq_len, rope_theta=5000.0, norm_eps=1e-5, pad_vocab_to=64,
                      init_std=0.1, placement=placement, **changes)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def random_tokens(vocab_size: int, seed: int = 1, T: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (3, T), generator=g)
    tokens[0, :4] = torch.tensor([0, vocab_size - 1, vocab_size - 1, 0])  # first and last ids
    return tokens


@torch.no_grad()
def max_diff(model, hf_model, tokens: torch.Tensor) -> float:
    ours, theirs = model(tokens), hf_model(input_ids=tokens).logits
    assert theirs.shape == ours.shape  # no padding rows left in the exported vocabulary
    return float((ours - theirs).abs().max())


def load(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    """A byte-level BPE trained on CORPUS, saved as GPT-2's vocab.json + merges.txt pair."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=380, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 10, trainer)
    folder = tmp_path_factory.mktemp("bpe")
    tok.model.save(str(folder))
    assert {p.name for p in folder.iterdir()} == {"vocab.json", "merges.txt"}
    return folder


@pytest.fixture(scope="module")
def bpe(bpe_dir):
    tok = load_tokenizer(f"files:{bpe_dir}")
    assert tok.vocab_size > 300 and len(tok.encode_batch([TEXT])[0]) < len(TEXT) / 2  # merges apply
    return tok


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("placement, changes, cls", [a[1:] for a in ARMS], ids=[a[0] for a in ARMS])
def test_export_matches_suite_logits(placement, changes, cls, bpe, bpe_dir, tmp_path):
    model = suite_model(placement, bpe.vocab_size, **changes)
    assert model.cfg.padded_vocab > model.cfg.vocab_size
    out = export_hf(model, tmp_path / "hf", f"files:{bpe_dir}")
    assert out.architecture == cls and out.max_abs_diff < TOL
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.folder.iterdir()}
    hf_model = load(out.folder)
    assert type(hf_model).__name__ == cls
    assert hf_model.config.vocab_size == bpe.vocab_size
    assert max_diff(model, hf_model, random_tokens(bpe.vocab_size)) < TOL
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out.folder))
    ids = hf_tok(TEXT)["input_ids"]  # transformers' defaults: special tokens "added" (none here)
    assert ids == bpe.encode_batch([TEXT])[0]
    assert max_diff(model, hf_model, torch.tensor([ids])) < TOL
    meta = json.loads((out.folder / "periln.json").read_text())
    assert meta["architecture"] == cls and meta["placement"] == placement


def test_gemma_export_switches_gemma_features_off(bpe, bpe_dir, tmp_path):
    """What makes Gemma 2 compute Peri-LN: read back from the written config."""
    c = json.loads((export_hf(suite_model("peri_ln", bpe.vocab_size), tmp_path / "g", f"files:{bpe_dir}")
                    .folder / "config.json").read_text())
    assert c["hidden_activation"] == "silu" and c["query_pre_attn_scalar"] == 16  # head_dim 64 / 4
    assert c["attn_logit_softcapping"] is None and c["final_logit_softcapping"] is None
    assert c["layer_types"] == ["full_attention"] * 3 and c["tie_word_embeddings"] is False
    assert c["rope_parameters"]["rope_theta"] == 5000.0 and c["rms_norm_eps"] == 1e-5
    assert c["num_key_value_heads"] == 2 and c["head_dim"] == 16


def test_export_from_run_directory_and_run_key(tmp_path):
    """A trained run's folder (config + checkpoints/last.ckpt) exports with its tokenizer."""
    cfg, model = _checkpoint(tmp_path, "peri_ln", "byte", 257, sweep="hf", step=7)
    ckpt = cfg.run_dir / "checkpoints" / "last.ckpt"
    out = export_hf(cfg.run_dir, tmp_path / "a")
    assert out.architecture == "Gemma2ForCausalLM" and out.tokenizer == "byte"
    meta = json.loads((out.folder / "periln.json").read_text())
    assert (meta["key"], meta["step"], meta["checkpoint"]) == (cfg.key, 7, str(ckpt))
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out.folder))
    text = "Größe: naïve café, 42!"
    assert hf_tok(text)["input_ids"] == list(text.encode()) and hf_tok.eos_token_id == 256
    assert hf_tok.decode(list(text.encode())) == text
    assert max_diff(model, load(out.folder), torch.tensor([hf_tok(text)["input_ids"]])) < TOL
    by_key = export_hf(cfg.key, tmp_path / "b", runs_dir=tmp_path / "runs", sweep="hf")
    assert max_diff(model, load(by_key.folder), random_tokens(257)) < TOL


def test_prefix_eot_tokenizer(bpe, bpe_dir, tmp_path):
    out = export_hf(suite_model("pre_ln", bpe.vocab_size), tmp_path / "p", f"files:{bpe_dir}",
                    prefix_eot=True)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out.folder))
    ids = bpe.encode_batch([TEXT])[0]
    assert hf_tok(TEXT)["input_ids"] == [bpe.eot_id, *ids]
    assert hf_tok(TEXT, add_special_tokens=False)["input_ids"] == ids


def test_tokenizer_json_that_adds_a_bos_is_exported_as_the_suite_encodes(bpe, tmp_path):
    """A files:<dir> tokenizer.json whose post-processor adds a BOS: the suite never adds it
    (add_special_tokens=False in training and in its adapter), so neither does the export."""
    from tokenizers import processors

    tok = bpe.tok.__class__.from_str(bpe.tok.to_str())
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                       special_tokens=[("<|endoftext|>", bpe.eot_id)])
    (tmp_path / "src").mkdir()
    tok.save(str(tmp_path / "src" / "tokenizer.json"))
    assert tok.encode(TEXT).ids[0] == bpe.eot_id  # the file's own default adds it
    suite_tok = load_tokenizer(f"files:{tmp_path / 'src'}")
    ids = suite_tok.encode_batch([TEXT])[0]
    assert ids == bpe.encode_batch([TEXT])[0]
    save_tokenizer(suite_tok, tmp_path / "out", 64)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert hf_tok(TEXT)["input_ids"] == ids


def _train_ranks(texts: list[str], pattern: str, merges: int) -> dict[bytes, int]:
    """Byte-pair ranks learned greedily from texts (what tiktoken's encodings are)."""
    ranks = {bytes([b]): b for b in range(256)}
    words = [[bytes([b]) for b in w.encode()] for t in texts for w in re.findall(pattern, t)]
    for _ in range(merges):
        counts: dict[tuple[bytes, bytes], int] = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], p))
        ranks[best[0] + best[1]] = len(ranks)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [best[0] + best[1]]
                i += 1
    return ranks


def test_tiktoken_tokenizer_converts_exactly(tmp_path):
    """A tiktoken encoding (built here: no download) whose end-of-text id leaves a gap after the
    ranks, as cl100k_base's does."""
    import tiktoken

    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    ranks = _train_ranks(CORPUS, r" ?\w+| ?[^\w\s]+|\s+", merges=60)
    eot = len(ranks) + 1
    enc = tiktoken.Encoding("toy", pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": eot})
    # the suite's wrapper around that encoding (its constructor only knows named encodings)
    tok = TiktokenTokenizer.__new__(TiktokenTokenizer)
    tok.enc, tok.spec, tok.vocab_size, tok.eot_id = enc, "tiktoken:toy", enc.n_vocab, enc.eot_token
    save_tokenizer(tok, tmp_path, 64)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [*CORPUS, "Unseen words: zebra quokka 1234 !?", "  two  spaces\nand a line"]:
        assert hf_tok(text)["input_ids"] == enc.encode_ordinary(text), text
    assert len(enc.encode_ordinary(TEXT)) < len(TEXT) / 2
    assert hf_tok.convert_tokens_to_ids("<|endoftext|>") == eot == hf_tok.eos_token_id


@pytest.mark.skipif(not GPT2_DIR.is_dir(), reason=f"no GPT-2 tokenizer files at {GPT2_DIR}")
def test_gpt2_files_tokenizer(tmp_path):
    tok = load_tokenizer(f"files:{GPT2_DIR}")
    save_tokenizer(tok, tmp_path, 1024)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [*CORPUS, " leading space, 'quotes' and numbers 1,234.5\n\nnew paragraph"]:
        assert hf_tok(text)["input_ids"] == tok.encode_batch([text])[0]
    assert hf_tok.eos_token_id == tok.eot_id == 50256


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("placement", sorted(set(load_all()) - set(FAMILIES) - {"sandwich_ln"}))
def test_export_refuses_arms_without_a_counterpart(placement, tmp_path):
    with pytest.raises(ConfigError) as err:
        export_hf(suite_model(placement, 257), tmp_path / "x")
    msg = one_line(err)
    assert f"placement {placement!r}" in msg and "no transformers architecture" in msg
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("placement, changes, words", [
    ("pre_ln", {"norm": "layernorm"}, "norm='layernorm'"),
    ("olmo2", {"norm": "layernorm"}, "norm='layernorm'"),
    ("peri_ln", {"norm": "layernorm"}, "norm='layernorm'"),
    ("peri_ln", {"tie_embeddings": True}, "tied embeddings with an embedding norm"),
    ("pre_ln_embed_norm", {"tie_embeddings": True}, "tied embeddings with an embedding norm"),
    ("pre_ln", {"embed_norm": True, "tie_embeddings": True}, "tied embeddings with an embedding norm"),
])
def test_export_refuses_settings_without_a_counterpart(placement, changes, words, tmp_path):
    with pytest.raises(ConfigError) as err:
        export_hf(suite_model(placement, 257, **changes), tmp_path / "x")
    msg = one_line(err)
    assert words in msg and f"placement {placement!r}" in msg


def test_export_refuses_bad_targets(tmp_path):
    model = suite_model("pre_ln", 300)
    with pytest.raises(ConfigError) as err:
        export_hf(model, tmp_path / "x", ByteTokenizer())
    assert "has 257 tokens but the model has 300" in one_line(err)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError) as err:
        export_hf(model, tmp_path / "full")
    assert "not an empty folder" in one_line(err)
    with pytest.raises(ConfigError) as err:
        export_hf(tmp_path / "no-run", tmp_path / "y")
    assert "no-run" in one_line(err)


def test_missing_extra_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(ConfigError) as err:
        export_hf(suite_model("pre_ln", 257), tmp_path / "x")
    assert "pip install 'periln-suite[hf]'" in one_line(err)


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize("placement, changes", [("pre_ln", {}), ("pre_ln", {"tie_embeddings": True}),
                                                ("pre_ln", {"qk_norm": True}), ("olmo2", {})])
def test_round_trip(placement, changes, tmp_path):
    model = suite_model(placement, 257, **changes)
    folder = export_hf(model, tmp_path / "hf").folder
    back, cfg = load_hf_llama(folder)
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "ff_dim", "max_seq_len", "norm_eps",
                 "rope_theta", "tie_embeddings", "qk_norm", "vocab_size", "placement"):
        assert getattr(cfg, name) == getattr(model.cfg, name), name
    original = model.state_dict()
    for name, value in back.state_dict().items():  # the same numbers, not close ones
        assert torch.equal(value, original[name][: value.shape[0]]), name
    tokens = random_tokens(257)
    with torch.no_grad():
        assert torch.equal(back(tokens), model(tokens))


def hf_llama_folder(tmp_path, config_cls="LlamaConfig", **changes) -> Path:
    """A random transformers model saved by transformers itself (norm gains perturbed)."""
    torch.manual_seed(3)
    kw = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
              rope_theta=20000.0, tie_word_embeddings=False, initializer_range=0.1)
    kw.update(changes)
    config = getattr(transformers, config_cls)(**kw)
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    folder = tmp_path / config_cls
    model.save_pretrained(str(folder))
    return folder


@pytest.mark.parametrize("config_cls, changes", [
    ("LlamaConfig", {}), ("LlamaConfig", {"tie_word_embeddings": True}),
    ("MistralConfig", {"sliding_window": None}), ("Qwen3Config", {"head_dim": 16}), ("Olmo2Config", {})])
def test_import_matches_transformers_logits(config_cls, changes, tmp_path):
    folder = hf_llama_folder(tmp_path, config_cls, **changes)
    model, cfg = load_hf_llama(folder)
    assert (cfg.vocab_size, cfg.kv_heads, cfg.rope_theta, cfg.norm_eps) == (300, 2, 20000.0, 1e-5)
    assert max_diff(model, load(folder), random_tokens(300)) < TOL


@pytest.mark.parametrize("change, words", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, "RoPE scaling 'linear'"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"hidden_act": "gelu"}, "activation 'gelu'"),
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"head_dim": 32}, "head_dim 32 x 4 heads != hidden_size 64"),
    ({"model_type": "mistral", "sliding_window": 4096}, "sliding-window attention"),
])
def test_import_refuses_unsupported_configs(change, words, tmp_path):
    folder = hf_llama_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as err:
        load_hf_llama(folder)
    assert words in one_line(err)


def test_import_refuses_folders_without_safetensors(tmp_path):
    folder = hf_llama_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ConfigError) as err:
        load_hf_llama(folder)
    assert "no model.safetensors" in one_line(err)
    with pytest.raises(ConfigError) as err:
        load_hf_llama(tmp_path / "nowhere")
    assert "no config.json" in one_line(err)


# ----------------------------------------------------------------------------- lm-eval


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from evals.tasks import PAPER_TASKS
    from suite.synthetic_tasks import write_synthetic_benchmarks

    folder = tmp_path_factory.mktemp("bench")
    write_synthetic_benchmarks(folder, n=20, tasks=PAPER_TASKS)
    return folder


@pytest.fixture(autouse=True)
def isolated_hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))


def accuracies(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.endswith(("_stderr", "/bpb"))}


def bits_per_byte(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.endswith("/bpb")}


PAIRS = [("The quick brown", " fox"), ("A dog is", " lazy."), ("Layers normalize the", " stream of each"),
         ("Question: what is quick? Answer:", " the fox")]


@pytest.mark.parametrize("placement", ["pre_ln", "peri_ln"])
@pytest.mark.parametrize("prefix_eot", [False, True], ids=["no-prefix", "eot-prefix"])
def test_lm_eval_hf_backend_equals_suite_adapter(placement, prefix_eot, bench, tmp_path):
    """lm-eval's HF model on the exported folder and the suite's adapter on the suite model, same
    items: the same accuracies, and per request the same log-likelihoods. The adapter's
    end-of-text prefix corresponds to an exported tokenizer that prepends that token."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evals.adapter import PerilnLM
    from evals.run import evaluate

    model = suite_model(placement, 257, max_seq_len=256)
    folder = export_hf(model, tmp_path / "hf", "byte", prefix_eot=prefix_eot).folder
    theirs = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=16)
    ours = PerilnLM(model=model, tokenizer=ByteTokenizer(), device="cpu", batch_size=16,
                    prefix_eot=prefix_eot)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    for (a, greedy_a), (b, greedy_b) in zip(theirs.loglikelihood(requests), ours.loglikelihood(requests)):
        assert abs(a - b) < TOL * max(1.0, abs(b)) and greedy_a == greedy_b
    kw = dict(data_dir=bench, cache_dir=tmp_path / "datasets")
    got, want = evaluate(theirs, "paper", **kw)["metrics"], evaluate(ours, "paper", **kw)["metrics"]
    assert accuracies(got) == accuracies(want) and len(accuracies(want)) == 9
    assert bits_per_byte(got).keys() == bits_per_byte(want).keys() and len(bits_per_byte(want)) == 5
    for key, value in bits_per_byte(want).items():  # the same log-likelihoods, summed in fp32
        assert got[key] == pytest.approx(value, rel=1e-5), key


def test_prefix_changes_the_scores(tmp_path):
    """The control for the test above: the two conventions are told apart by its requests."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evals.adapter import PerilnLM

    model = suite_model("pre_ln", 257, max_seq_len=256)
    folder = export_hf(model, tmp_path / "hf", "byte").folder
    theirs = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=16)
    ours = PerilnLM(model=model, tokenizer=ByteTokenizer(), device="cpu", prefix_eot=True)
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]
    pairs = zip(theirs.loglikelihood(requests), ours.loglikelihood(requests))
    diffs = [abs(a - b) for (a, _), (b, _) in pairs]
    assert min(diffs) > 1e-3


@pytest.mark.slow
def test_lm_eval_command_line_on_exported_folder(bench, tmp_path):
    """`lm_eval --model hf` (through evals.lm_eval_cli for --data-dir) on the exported folder."""
    from evals.adapter import PerilnLM
    from evals.run import evaluate

    model = suite_model("peri_ln", 257, max_seq_len=256)
    folder = export_hf(model, tmp_path / "hf", "byte").folder
    out = tmp_path / "lm_eval_out"
    proc = subprocess.run(
        [sys.executable, "-m", "evals.lm_eval_cli", "run", "--model", "hf", "--model_args",
         f"pretrained={folder},dtype=float32", "--device", "cpu", "--tasks", "piqa,winogrande",
         "--data-dir", str(bench), "--batch_size", "16", "--output_path", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = list(out.rglob("results_*.json"))
    results = json.loads(result.read_text())["results"]
    want = evaluate(PerilnLM(model=model, tokenizer=ByteTokenizer(), device="cpu", prefix_eot=False),
                    "piqa,winogrande", data_dir=bench, cache_dir=tmp_path / "datasets")["metrics"]
    assert results["piqa"]["acc,none"] == want["eval/piqa/acc"]
    assert results["piqa"]["acc_norm,none"] == want["eval/piqa/acc_norm"]
    assert results["winogrande"]["acc,none"] == want["eval/winogrande/acc"]


# ----------------------------------------------------------------------------- the command line


def _checkpoint(tmp_path, placement: str, tokenizer: str, vocab_size: int, sweep: str = "cli",
                step: int = 3):
    """A run directory with an initialised checkpoint (norm gains moved off their start values)."""
    from suite.config import load_run_config
    from suite.train import LitLM

    cfg = load_run_config(None, [f"out_dir={tmp_path / 'runs'}", f"sweep={sweep}", f"placement={placement}",
                                 "train.seq_len=64", f"data.tokenizer={tokenizer}"])
    torch.manual_seed(0)
    lit = LitLM(cfg.to_dict(), vocab_size)
    with torch.no_grad():
        for p in lit.model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    ckpt = cfg.run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": dict(lit.hparams), "state_dict": lit.state_dict(), "global_step": step},
               ckpt)
    return cfg, lit.model.eval()


def test_periln_export_hf_command(bpe, bpe_dir, tmp_path, capsys):
    """`periln export-hf RUN --out DIR` on a run trained with a GPT-2-style BPE (vocab.json +
    merges.txt): transformers alone loads model and tokenizer, and computes the suite's logits."""
    from suite.cli import main as periln

    cfg, model = _checkpoint(tmp_path, "peri_ln", f"files:{bpe_dir}", bpe.vocab_size)
    out = tmp_path / "exported"
    assert periln(["export-hf", cfg.key, "--out", str(out), "--out-dir", str(tmp_path / "runs")]) == 0
    assert f"Gemma2ForCausalLM in {out}" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    hf_model = load(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    ids = hf_tok(TEXT)["input_ids"]
    assert ids == bpe.encode_batch([TEXT])[0]
    assert max_diff(model, hf_model, torch.tensor([ids])) < TOL
    assert max_diff(model, hf_model, random_tokens(bpe.vocab_size)) < TOL


def test_periln_export_hf_refuses_in_one_line(tmp_path, capsys):
    from suite.cli import main as periln

    cfg, _ = _checkpoint(tmp_path, "post_ln", "byte", 257)
    assert periln(["export-hf", str(cfg.run_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("periln: error: export-hf: placement 'post_ln'")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------- periln eval of a folder


def test_periln_eval_of_a_transformers_folder(bench, tmp_path, capsys):
    """`periln eval FOLDER` scores a transformers Llama through the suite's adapter: the same
    accuracies and bits per byte as lm-eval's own HF model on the folder (no end-of-text prefix, its
    convention); the run key is hf-<name>, the size external."""
    from lm_eval.models.huggingface import HFLM

    from evals.run import evaluate
    from suite.cli import main as periln

    folder = hf_llama_folder(tmp_path, max_position_embeddings=256)
    save_tokenizer(ByteTokenizer(), folder, 256)  # 257 byte tokens of the model's 300
    runs = tmp_path / "runs"
    args = ["eval", str(folder), "--tasks", "piqa,winogrande", "--data-dir", str(bench),
            "--cache-dir", str(tmp_path / "datasets"), "--out-dir", str(runs)]
    assert periln(args) == 0
    assert "hf-LlamaConfig (size external)" in capsys.readouterr().out
    saved = json.loads((runs / "external" / "hf-LlamaConfig" / "eval.json").read_text())
    meta = saved["meta"]
    assert (meta["key"], meta["size"], meta["step"], meta["checkpoint"]) == ("hf-LlamaConfig", "external",
                                                                             None, None)
    assert meta["hf_folder"] == str(folder.resolve()) and meta["prefix_eot"] is False
    theirs = evaluate(HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=16),
                      "piqa,winogrande", data_dir=bench, cache_dir=tmp_path / "datasets")["metrics"]
    assert accuracies(saved["metrics"]).keys() == accuracies(theirs).keys()
    for key, value in accuracies(theirs).items():  # accuracies equal, bits per byte within fp32 error
        assert saved["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
    assert bits_per_byte(theirs).keys() == {"eval/piqa/bpb", "eval/winogrande/bpb"}
    for key, value in bits_per_byte(theirs).items():
        assert saved["metrics"][key] == pytest.approx(value, rel=1e-5), key

    # the prefix switched on by hand: recorded, and it changes what is scored
    assert periln([*args, "--prefix-eot", "--output", str(tmp_path / "prefixed.json")]) == 0
    prefixed = json.loads((tmp_path / "prefixed.json").read_text())
    assert prefixed["meta"]["prefix_eot"] is True and "set by" in prefixed["meta"]["prefix_eot_rule"]
    assert prefixed["metrics"]["eval/piqa/bpb"] != saved["metrics"]["eval/piqa/bpb"]


def test_periln_eval_refuses_an_unsupported_folder(bench, tmp_path, capsys):
    from suite.cli import main as periln

    folder = hf_llama_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    capsys.readouterr()
    assert periln(["eval", str(folder), "--tasks", "piqa", "--data-dir", str(bench)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model_type 'gpt2' is not supported" in err

"""Hugging Face `transformers` export and import: the only module of the project that imports it.

    export_hf(run_or_model, out_dir)   a suite model -> a folder AutoModelForCausalLM loads alone
    load_hf_llama(folder)              a local Llama-family folder -> the suite's own model class

Export maps an arm to the transformers architecture that computes the same function, weight for
weight, and refuses (one ConfigError line) whatever has no exact counterpart:

    pre_ln, pre_ln_embed_norm   LlamaForCausalLM (Qwen3ForCausalLM with qk_norm: per-head QK-norm)
    olmo2                       Olmo2ForCausalLM (full-width QK-norm, output norms only)
    peri_ln, gemma              Gemma2ForCausalLM (Gemma3ForCausalLM with qk_norm): Gemma's decoder
                                layer is the Peri-LN block (norms before and after each sub-layer)

What is folded, exactly: RMSNorm gains (Gemma computes x/rms(x) * (1 + w): w - 1 is stored for a
suite gain w); an embedding norm (a function of the token alone, so N(E[t]) becomes row t of an
untied table); Gemma's sqrt(d) embedding multiplier (the table is divided by it; with tied
embeddings the final norm's gain carries the factor instead); the padded vocabulary rows (cut:
they are never tokens and the suite drops their logits before any softmax). What is switched off:
Gemma's soft-capping (attention and final logits), sliding windows (every layer full attention),
its attention scale (query_pre_attn_scalar = head_dim, the suite's 1/sqrt(head_dim)); GELU is
replaced by the suite's SiLU. RoPE is the same half-split rotation on both sides (rotate_half), so
no q/k permutation is needed. Every export is checked before it is written: the transformers
model's logits against the suite's on random tokens, the tokenizer's ids against the run's.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import ConfigError, ModelConfig, Transformer, build_model
from models.layers import MLP, Attention, Norm
from models.placements.gemma import OffsetRMSNorm

EXTRA_HINT = "pip install 'periln-suite[hf]'"
META_FILE = "periln.json"  # provenance of an exported folder (not read by transformers)
TOLERANCE = 1e-4  # max |logit difference| an export may show (fp32), times max(1, max |logit|)
CHECK_TEXTS = ("The quick brown fox jumps over the lazy dog.",
               "Peri-LN puts a norm before and after each sub-layer; 42 is the answer!",
               "  leading spaces, tabs\tand new\nlines, UTF-8: café, naïve, 日本")


def _require() -> Any:
    """transformers, imported on first use: the suite works without the `hf` extra."""
    try:
        import safetensors  # noqa: F401
        import transformers
    except ImportError as err:
        raise ConfigError(f"Hugging Face export/import needs the `hf` extra ({err.name} is not "
                          f"installed): {EXTRA_HINT}") from None
    return transformers


@dataclass(frozen=True)
class _Arch:
    """A transformers decoder architecture, as the suite's block slots it fills."""

    cls: str  # the transformers model class
    config_cls: str
    norms: dict[str, str]  # suite block norm slot -> the decoder layer's norm in transformers
    qk_norm: str  # the suite Attention.qk_norm it has: "none", "head" (per head) or "full" (OLMo 2)
    offset_norm: bool = False  # RMSNorm gains stored as w - 1: x / rms(x) * (1 + w) (Gemma)
    embed_scale: bool = False  # token embeddings multiplied by sqrt(d_model) (Gemma)
    extra: dict[str, Any] = field(default_factory=dict)  # config settings that switch features off


_PRE = {"attn_in_norm": "input_layernorm", "mlp_in_norm": "post_attention_layernorm"}
_OUT = {"attn_out_norm": "post_attention_layernorm", "mlp_out_norm": "post_feedforward_layernorm"}
_PERI = {"attn_in_norm": "input_layernorm", "attn_out_norm": "post_attention_layernorm",
         "mlp_in_norm": "pre_feedforward_layernorm", "mlp_out_norm": "post_feedforward_layernorm"}
_GEMMA_OFF = dict(attn_logit_softcapping=None, final_logit_softcapping=None, hidden_activation="silu",
                  attention_bias=False)
ARCHS: dict[str, _Arch] = {
    "llama": _Arch("LlamaForCausalLM", "LlamaConfig", _PRE, "none",
                   extra=dict(hidden_act="silu", attention_bias=False, mlp_bias=False)),
    "qwen3": _Arch("Qwen3ForCausalLM", "Qwen3Config", _PRE, "head",
                   extra=dict(hidden_act="silu", attention_bias=False, use_sliding_window=False,
                              sliding_window=None)),
    "olmo2": _Arch("Olmo2ForCausalLM", "Olmo2Config", _OUT, "full",
                   extra=dict(hidden_act="silu", attention_bias=False)),
    "gemma2": _Arch("Gemma2ForCausalLM", "Gemma2Config", _PERI, "none", True, True, _GEMMA_OFF),
    "gemma3_text": _Arch("Gemma3ForCausalLM", "Gemma3TextConfig", _PERI, "head", True, True, _GEMMA_OFF),
}
# placement -> {the model's QK-norm: architecture}; any other placement has no exact counterpart
FAMILIES: dict[str, dict[str, str]] = {
    "pre_ln": {"none": "llama", "head": "qwen3"},
    "pre_ln_embed_norm": {"none": "llama", "head": "qwen3"},
    "olmo2": {"full": "olmo2"},
    "peri_ln": {"none": "gemma2", "head": "gemma3_text"},
    "gemma": {"none": "gemma2", "head": "gemma3_text"},
}
SLOTS = tuple(f"{sub}_{slot}_norm" for sub in ("attn", "mlp") for slot in ("in", "out", "post"))


@dataclass(frozen=True)
class Exported:
    folder: Path
    architecture: str  # the transformers class, e.g. "LlamaForCausalLM"
    max_abs_diff: float  # logits of the written model against the suite's, on random tokens
    tokenizer: str | None  # the tokenizer spec whose files were written (None: no tokenizer)
    notes: tuple[str, ...]  # what was folded to make the mapping exact


# --------------------------------------------------------------------------------- export


def _refuse(arm: str, why: str) -> ConfigError:
    return ConfigError(f"export-hf: {arm}: {why}")


def _is_identity(m: nn.Module) -> bool:
    return isinstance(m, nn.Identity)


def _check_norm(arm: str, where: str, m: nn.Module, cfg: ModelConfig) -> None:
    # a fixed input scale (LayerNorm Scaling) is the block's, not the norm's: checked per sub-layer
    if isinstance(m, OffsetRMSNorm):
        kind, eps = "rmsnorm", m.eps
    elif isinstance(m, Norm):
        kind, eps = m.kind, m.eps
    else:
        raise _refuse(arm, f"{where} is a {type(m).__name__}, not an RMSNorm: no transformers counterpart")
    if kind != "rmsnorm":
        raise _refuse(arm, f"norm={kind!r} ({where}): the matching transformers architectures have "
                           "RMSNorm only; retrain with norm=rmsnorm")
    if eps != cfg.norm_eps:
        raise _refuse(arm, f"{where} has eps {eps:g} but the model's norm_eps is {cfg.norm_eps:g}; "
                           "transformers has one eps for every norm")


def choose_arch(model: Transformer) -> tuple[str, _Arch]:
    """The transformers architecture that computes exactly what `model` computes, or a ConfigError
    naming the arm and the setting that has none."""
    cfg, placement = model.cfg, model.placement.name
    arm = f"placement {cfg.placement!r}"
    family = FAMILIES.get(placement)
    if family is None:
        known = ", ".join(sorted(FAMILIES))
        raise _refuse(arm, f"no transformers architecture computes this block exactly (exportable: {known})")
    blocks = list(model.blocks)
    attn = blocks[0].attn if blocks else None
    if not isinstance(attn, Attention):
        raise _refuse(arm, "its attention is not the suite's Attention module")
    qk = _qk_kind(attn)
    if qk not in family:
        names = {"none": "no QK-norm", "head": "per-head QK-norm (qk_norm=true)",
                 "full": "full-width QK-norm"}
        raise _refuse(arm, f"{names[qk]} has no counterpart here (transformers' matching architectures: "
                           f"{', '.join(f'{ARCHS[a].cls} with {names[q]}' for q, a in family.items())})")
    key = family[qk]
    arch = ARCHS[key]
    for i, block in enumerate(blocks):
        layout = block.layout
        for sub in (layout.attn, layout.mlp):
            if sub.in_scale != 1.0 or sub.residual_scale != 1.0:
                raise _refuse(arm, f"block {i} scales its input or residual; {arch.cls} does not")
        used = {s for s in SLOTS if not _is_identity(getattr(block, s))}
        if used != set(arch.norms):
            raise _refuse(arm, f"block {i} has norms {sorted(used)}, {arch.cls} has {sorted(arch.norms)}")
        for s in used:
            _check_norm(arm, f"block {i} {s}", getattr(block, s), cfg)
        a = block.attn
        if not isinstance(a, Attention) or _qk_kind(a) != qk or not _is_identity(a.v_norm):
            raise _refuse(arm, f"block {i}'s attention differs from block 0's (QK/V norms)")
        if qk != "none":
            _check_norm(arm, f"block {i} q_norm", a.q_norm, cfg)
            _check_norm(arm, f"block {i} k_norm", a.k_norm, cfg)
        if type(block.mlp) is not MLP:
            raise _refuse(arm, f"block {i}'s MLP is not the suite's SwiGLU MLP")
    if _is_identity(model.final_norm):
        raise _refuse(arm, f"it has no final norm; {arch.cls} always has one")
    _check_norm(arm, "final_norm", model.final_norm, cfg)
    has_embed_norm = not _is_identity(model.embed_norm)
    if cfg.tie_embeddings and has_embed_norm:
        raise _refuse(arm, f"tied embeddings with an embedding norm: {arch.cls} feeds the raw table to "
                           "its first layer and the norm cannot be folded into a table the LM head shares "
                           "(export an untied model, or embed_norm=false)")
    return key, arch


def _gain(m: nn.Module) -> torch.Tensor:
    """The norm's multiplicative gain."""
    w = m.weight.detach().float()
    return 1.0 + w if isinstance(m, OffsetRMSNorm) else w


def _norm_weight(m: nn.Module, arch: _Arch, factor: float = 1.0) -> torch.Tensor:
    """The weight transformers stores for the suite norm `m` (times `factor` on its gain)."""
    if isinstance(m, OffsetRMSNorm) and arch.offset_norm and factor == 1.0:
        return m.weight.detach().float().clone()  # same form on both sides: no rounding at all
    gain = _gain(m) * factor
    return gain - 1.0 if arch.offset_norm else gain


def suite_names(model: Transformer, arch: _Arch) -> dict[str, str]:
    """transformers parameter name -> the suite's (one table for both directions; with tied
    embeddings the LM head is the embedding and has no entry)."""
    out = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "final_norm.weight",
           "lm_head.weight": "lm_head.weight"}
    if model.cfg.tie_embeddings:
        del out["lm_head.weight"]
    for i in range(len(model.blocks)):
        pre = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            out[f"{pre}.self_attn.{name}.weight"] = f"blocks.{i}.attn.{name}.weight"
        for name in ("gate_proj", "up_proj", "down_proj"):
            out[f"{pre}.mlp.{name}.weight"] = f"blocks.{i}.mlp.{name}.weight"
        for slot, hf_name in arch.norms.items():
            out[f"{pre}.{hf_name}.weight"] = f"blocks.{i}.{slot}.weight"
        if arch.qk_norm != "none":
            out[f"{pre}.self_attn.q_norm.weight"] = f"blocks.{i}.attn.q_norm.weight"
            out[f"{pre}.self_attn.k_norm.weight"] = f"blocks.{i}.attn.k_norm.weight"
    return out


@torch.no_grad()
def hf_state_dict(model: Transformer, arch: _Arch) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The transformers state dict of `model` under `arch`, and notes on what was folded."""
    cfg, notes = model.cfg, []
    V = cfg.vocab_size
    target_scale = math.sqrt(cfg.d_model) if arch.embed_scale else 1.0
    table = model.embed.weight.detach().float()[:V]
    final_factor = 1.0
    if not _is_identity(model.embed_norm):  # untied (choose_arch): fold h0 = N(E[t] * s) into row t
        x = table * model.embed_scale if model.embed_scale != 1.0 else table
        table = model.embed_norm(x) / target_scale
        notes.append("embedding norm folded into the embedding table")
    elif model.embed_scale != target_scale:
        table = table * (model.embed_scale / target_scale)
        if cfg.tie_embeddings:  # the LM head shares the rescaled table: the final norm undoes it
            final_factor = target_scale / model.embed_scale
            notes.append(f"tied table times {model.embed_scale / target_scale:.6g}, final norm gain "
                         f"times {final_factor:.6g}")
        else:
            notes.append(f"embedding table times {model.embed_scale / target_scale:.6g}")
    if cfg.padded_vocab != V:
        notes.append(f"padded vocabulary rows {V}..{cfg.padded_vocab - 1} dropped")
    if arch.offset_norm and not isinstance(model.final_norm, OffsetRMSNorm):
        notes.append("RMSNorm gains stored as w - 1 (transformers computes x/rms(x) * (1 + w))")
    sd = {}
    for hf_name, name in suite_names(model, arch).items():
        if hf_name == "model.embed_tokens.weight":
            sd[hf_name] = table
        elif hf_name == "lm_head.weight":
            sd[hf_name] = model.lm_head.weight.detach().float()[:V]
        elif isinstance(m := model.get_submodule(name.rsplit(".", 1)[0]), (Norm, OffsetRMSNorm)):
            sd[hf_name] = _norm_weight(m, arch, final_factor if name == "final_norm.weight" else 1.0)
        else:
            sd[hf_name] = model.get_parameter(name).detach().float()
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = table
    return {k: v.contiguous() for k, v in sd.items()}, notes


def hf_config(model: Transformer, key: str, eot_id: int | None) -> Any:
    transformers = _require()
    cfg, arch = model.cfg, ARCHS[key]
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ff_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std, attention_dropout=0.0,
        # no pad id: a padding_idx row could be zeroed or frozen by transformers
        pad_token_id=None, bos_token_id=eot_id, eos_token_id=eot_id, **arch.extra)
    if key != "olmo2":  # OLMo 2's config derives head_dim from hidden_size / heads
        common["head_dim"] = cfg.head_dim
    if key in ("qwen3", "gemma2", "gemma3_text"):
        common["layer_types"] = ["full_attention"] * cfg.n_layers  # no sliding window anywhere
    if arch.embed_scale:  # Gemma: attention scale 1/sqrt(head_dim) (the suite's), window >= any input
        common.update(query_pre_attn_scalar=cfg.head_dim, sliding_window=cfg.max_seq_len)
    if key == "gemma3_text":  # one RoPE for both layer kinds (only full attention is used)
        rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        common.pop("rope_theta")
        common["rope_parameters"] = {"full_attention": dict(rope), "sliding_attention": dict(rope)}
        common["sliding_window_pattern"] = 1  # 4.x's switch for "no sliding layer"
    config = getattr(transformers, arch.config_cls)(**common)
    config.architectures = [arch.cls]
    return config


def _legacy_keys(key: str, cfg: ModelConfig) -> dict[str, Any]:
    """config.json keys transformers 4.x reads instead of `rope_parameters` (5.x ignores them):
    without them an older reader would silently use its default RoPE base."""
    out: dict[str, Any] = {"rope_theta": cfg.rope_theta}
    if key == "gemma3_text":
        out.update(rope_local_base_freq=cfg.rope_theta, sliding_window_pattern=1)  # 4.x: no sliding layer
    return out


def _byte_tokenizer() -> Any:
    """The suite's byte tokenizer (id = byte value, 256 = end of text) as a `tokenizers` BPE with
    no merges over GPT-2's byte-to-character alphabet."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = bytes_to_unicode()
    tok = Tokenizer(BPE({chars[b]: b for b in range(256)}, [], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tok


def _tiktoken_tokenizer(enc: Any) -> Any:
    """A tiktoken encoding as a `tokenizers` byte-level BPE (transformers' TikTokenConverter), with
    the special tokens at their tiktoken ids (cl100k_base leaves a gap before <|endoftext|>, which
    adding them after the vocabulary would close)."""
    import base64

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import TikTokenConverter

    with tempfile.TemporaryDirectory(prefix="periln-tiktoken-") as tmp:
        path = Path(tmp) / "ranks.tiktoken"
        path.write_bytes(b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n"
                                  for t, r in sorted(enc._mergeable_ranks.items(), key=lambda x: x[1])))
        conv = TikTokenConverter(vocab_file=str(path), pattern=enc._pat_str)
        vocab, merges = conv.extract_vocab_merges_from_model(str(path))
    vocab.update(enc._special_tokens)
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False))
    tok.model.ignore_merges = True  # tiktoken looks a whole pre-token up before merging
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in enc._special_tokens])
    return tok


def _as_hf_tokenizer(tokenizer: Any) -> tuple[Any, str]:
    """A suite tokenizer -> (a `tokenizers.Tokenizer` with the same ids, its end-of-text string)."""
    from tokenizers import Tokenizer

    from suite.tokenizer import ByteTokenizer, HFTokenizer, TiktokenTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return _byte_tokenizer(), "<|endoftext|>"
    if isinstance(tokenizer, HFTokenizer):  # files:<dir> or hf:<name>: the same tokenizer, copied
        return Tokenizer.from_str(tokenizer.tok.to_str()), tokenizer.tok.id_to_token(tokenizer.eot_id)
    if isinstance(tokenizer, TiktokenTokenizer):
        inverse = {i: t for t, i in tokenizer.enc._special_tokens.items()}
        return _tiktoken_tokenizer(tokenizer.enc), inverse[tokenizer.eot_id]
    raise ConfigError(f"export-hf: tokenizer {getattr(tokenizer, 'spec', tokenizer)!r}: no conversion to "
                      "a transformers tokenizer; give tokenizer= a folder with a tokenizer.json")


def save_tokenizer(tokenizer: Any, out_dir: Path, max_length: int, prefix_eot: bool = False) -> None:
    """tokenizer.json + tokenizer_config.json that AutoTokenizer loads, checked to give the suite
    tokenizer's ids. prefix_eot: the tokenizer puts the end-of-text token before every text (as
    the suite's adapter does by default), so lm-eval's HF model scores with the same prefix."""
    transformers = _require()
    from tokenizers import processors

    tok, eot = _as_hf_tokenizer(tokenizer)
    if prefix_eot:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{eot} $A", pair=f"{eot} $A {eot} $B", special_tokens=[(eot, tokenizer.eot_id)])
    elif tok.encode("a").ids != tok.encode("a", add_special_tokens=False).ids:
        # the suite encodes without special tokens (training and its adapter): a BOS that a copied
        # tokenizer.json adds would be a token the model never saw at the start of a text
        tok.post_processor = None
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eot, eos_token=eot, pad_token=eot, model_max_length=max_length,
        clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out_dir))
    # transformers 5 writes its own class name, which 4.x's AutoTokenizer does not know; both read this
    config_file = out_dir / "tokenizer_config.json"
    config_json = json.loads(config_file.read_text())
    config_json["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_file.write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    loaded = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    prefix = [tokenizer.eot_id] if prefix_eot else []
    for text in CHECK_TEXTS:
        want = tokenizer.encode_batch([text])[0]
        got = loaded.encode(text, add_special_tokens=False, verbose=False)
        if got != want or loaded.encode(text, verbose=False) != prefix + want:
            raise ConfigError(f"export-hf: tokenizer {tokenizer.spec!r}: the converted tokenizer gives "
                              f"other ids on {text!r} ({got[:8]} vs {want[:8]}); not exported")
    if loaded.convert_tokens_to_ids(eot) != tokenizer.eot_id:
        raise ConfigError(f"export-hf: tokenizer {tokenizer.spec!r}: end-of-text {eot!r} lost its id")


def _load_source(source: Any, runs_dir: str | Path, sweep: str | None) -> tuple[Transformer, Any, dict]:
    if isinstance(source, Transformer):
        return source, None, {}
    from suite.checkpoint import load_checkpoint, resolve_checkpoint

    loaded = load_checkpoint(resolve_checkpoint(source, runs_dir, sweep))
    return loaded.model, loaded.tokenizer, {"checkpoint": str(loaded.checkpoint), "key": loaded.key,
                                            "step": loaded.step}


def _resolve_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or hasattr(tokenizer, "encode_batch"):
        return tokenizer
    from suite.tokenizer import load_tokenizer

    spec = str(tokenizer)
    return load_tokenizer(f"files:{spec}" if Path(spec).expanduser().is_dir() else spec)


@torch.no_grad()
def _max_logit_diff(model: Transformer, hf_model: nn.Module, seed: int = 0) -> tuple[float, float]:
    """max |suite - transformers| logits and max |suite logits| on random tokens (every id
    reachable, the end-of-text and last ids included)."""
    g = torch.Generator().manual_seed(seed)
    T = min(32, model.cfg.max_seq_len)
    tokens = torch.randint(0, model.cfg.vocab_size, (2, T), generator=g)
    tokens[0, 0], tokens[1, -1] = model.cfg.vocab_size - 1, 0
    ref = model(tokens).float()
    got = hf_model(input_ids=tokens).logits.float()
    return float((ref - got).abs().max()), float(ref.abs().max())


def _qk_kind(attn: Attention) -> str:
    """The suite attention's QK-norm as the mapping names it: "none", "head" (per head) or "full"."""
    if not attn.qk_norm:
        return "none"
    return "full" if attn.qk_full_width else "head"


def export_hf(source: Any, out_dir: str | Path, tokenizer: Any = None, *, prefix_eot: bool = False,
              overwrite: bool = False, runs_dir: str | Path = "runs", sweep: str | None = None) -> Exported:
    """Write `source` as a transformers model folder: config.json, model.safetensors, tokenizer files
    (when a tokenizer is known) and periln.json (provenance).

    source: a suite model (models.Transformer), or a run directory, .ckpt file or run key (looked up
    under runs_dir[/sweep], as `periln eval` does); a checkpoint brings its run's tokenizer.
    tokenizer: overrides it: a suite tokenizer, a spec ("byte", "files:<dir>", ...) or a folder.
    prefix_eot: the exported tokenizer prepends the end-of-text token (see save_tokenizer).
    """
    transformers = _require()
    model, run_tokenizer, meta = _load_source(source, runs_dir, sweep)
    tok = _resolve_tokenizer(tokenizer) if tokenizer is not None else run_tokenizer
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # the check below runs both models in fp32 on the CPU
    model = model.eval()
    cfg = model.cfg
    key, arch = choose_arch(model)
    if tok is not None and tok.vocab_size != cfg.vocab_size:
        raise ConfigError(f"export-hf: tokenizer {tok.spec!r} has {tok.vocab_size} tokens but the model "
                          f"has {cfg.vocab_size}")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise ConfigError(f"export-hf: {out} exists and is not an empty folder; pick another --out or "
                          "allow overwriting")
    sd, notes = hf_state_dict(model, arch)
    hf_model = getattr(transformers, arch.cls)(hf_config(model, key, tok.eot_id if tok else None)).float()
    hf_model.load_state_dict(sd, strict=True)
    hf_model.eval()
    if cfg.tie_embeddings and hf_model.lm_head.weight is not hf_model.model.embed_tokens.weight:
        raise RuntimeError(f"{arch.cls} did not tie its LM head to the embeddings")
    diff, scale = _max_logit_diff(model, hf_model)
    if not diff <= TOLERANCE * max(1.0, scale):
        raise RuntimeError(f"export-hf: {arch.cls} logits differ from the suite's by {diff:.3g} (limit "
                           f"{TOLERANCE * max(1.0, scale):.3g}); the mapping is wrong for this model")
    out.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(str(out))
    config_file = out / "config.json"
    config_json = json.loads(config_file.read_text())
    config_json.update({k: v for k, v in _legacy_keys(key, cfg).items() if k not in config_json})
    config_file.write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    if tok is not None:
        save_tokenizer(tok, out, cfg.max_seq_len, prefix_eot=prefix_eot)
    info = {"architecture": arch.cls, "placement": cfg.placement, "model": cfg.to_dict(),
            "tokenizer": tok.spec if tok else None, "prefix_eot": prefix_eot if tok else None,
            "max_abs_logit_diff": diff, "notes": notes, "transformers_version": transformers.__version__,
            **meta}
    (out / META_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return Exported(out, arch.cls, diff, tok.spec if tok else None, tuple(notes))


# --------------------------------------------------------------------------------- import

# model_type -> (the suite placement, the architecture in ARCHS whose weight names it uses): Mistral
# is Llama's block when no sliding window is used, Qwen3 is Llama's with per-head QK-norm
IMPORTABLE = {"llama": ("pre_ln", "llama"), "mistral": ("pre_ln", "llama"), "qwen3": ("pre_ln", "qwen3"),
              "olmo2": ("olmo2", "olmo2")}


def _rope_theta(c: dict, where: str) -> float:
    """The RoPE base of a config.json (4.x: rope_theta + rope_scaling; 5.x: rope_parameters)."""
    params = c.get("rope_parameters") or {}
    if "full_attention" in params:
        params = params["full_attention"]
    scaling = c.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if scaling else params.get("rope_type")
    if kind not in (None, "default"):
        raise ConfigError(f"{where}: RoPE scaling {kind!r} has no counterpart in the suite (plain RoPE only)")
    if float(c.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError(f"{where}: partial rotary embeddings are not supported (the suite rotates every "
                          "dimension)")
    return float(params.get("rope_theta", c.get("rope_theta", 10000.0)))


def hf_model_config(c: dict, where: str = "config.json", max_seq_len: int | None = None) -> ModelConfig:
    """A ModelConfig equal to a transformers Llama-family config.json, or a one-line ConfigError."""
    mt = c.get("model_type")
    if mt not in IMPORTABLE:
        raise ConfigError(f"{where}: model_type {mt!r} is not supported (Llama family: "
                          f"{', '.join(IMPORTABLE)})")
    act = c.get("hidden_act", c.get("hidden_activation", "silu"))
    if act != "silu":
        raise ConfigError(f"{where}: activation {act!r}; the suite's MLP is SwiGLU (silu) only")
    for flag in ("attention_bias", "mlp_bias"):
        if c.get(flag):
            raise ConfigError(f"{where}: {flag}=true; the suite's layers have no biases")
    if c.get("use_sliding_window") or (mt == "mistral" and c.get("sliding_window") is not None) or \
            "sliding_attention" in (c.get("layer_types") or []):
        raise ConfigError(f"{where}: sliding-window attention is not supported (the suite attends to "
                          "the whole context)")
    d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
    head_dim = c.get("head_dim")
    if head_dim is not None and int(head_dim) * heads != d:
        raise ConfigError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size {d}; the suite "
                          "needs head_dim = hidden_size / heads")
    kv = int(c.get("num_key_value_heads") or heads)
    placement, _ = IMPORTABLE[mt]
    return ModelConfig(
        vocab_size=int(c["vocab_size"]), d_model=d, n_layers=int(c["num_hidden_layers"]), n_heads=heads,
        n_kv_heads=None if kv == heads else kv, d_ff=int(c["intermediate_size"]),
        max_seq_len=int(max_seq_len or c.get("max_position_embeddings") or 2048), norm="rmsnorm",
        norm_eps=float(c.get("rms_norm_eps", 1e-6)), placement=placement, embed_norm=False,
        qk_norm=mt == "qwen3", tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        rope_theta=_rope_theta(c, where), init_std=float(c.get("initializer_range", 0.02)))


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise ConfigError(f"{folder}: no model.safetensors (or model.safetensors.index.json); only "
                          "safetensors weights are read")
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        out.update(load_file(str(folder / shard)))
    return out


def load_hf_llama(folder: str | Path, max_seq_len: int | None = None) -> tuple[Transformer, ModelConfig]:
    """A local transformers Llama-family folder (config.json + safetensors: Llama, Mistral without
    a sliding window, Qwen3 as Pre-LN with QK-norm, OLMo 2) as the suite's own model, in fp32 and
    eval mode, with the ModelConfig it was built from. max_seq_len: the RoPE tables' length
    (default: the config's max_position_embeddings)."""
    _require()
    d = Path(folder).expanduser()
    if not (d / "config.json").is_file():
        raise ConfigError(f"{d}: no config.json; give a transformers model folder")
    c = json.loads((d / "config.json").read_text())
    cfg = hf_model_config(c, str(d / "config.json"), max_seq_len)
    weights = _read_safetensors(d)
    model = build_model(cfg)
    arch = ARCHS[IMPORTABLE[c["model_type"]][1]]
    names = suite_names(model, arch)
    weights = {k: v for k, v in weights.items() if not k.endswith("rotary_emb.inv_freq")}  # old files
    if cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
    unknown = sorted(set(weights) - set(names))
    missing = sorted(set(names) - set(weights))
    if unknown or missing:
        raise ConfigError(f"{d}: weights do not match a {c['model_type']} config "
                          f"(unexpected: {unknown[:3]}, missing: {missing[:3]})")
    state = {names[k]: v.float() for k, v in weights.items()}
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{d}: weights do not fit the model its config describes "
                          f"({str(err).splitlines()[0][:200]})") from None
    return model.eval(), cfg

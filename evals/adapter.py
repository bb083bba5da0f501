"""The suite's models as an lm-eval language model (`periln`), scored in process.

Loglikelihood of a continuation = sum over its tokens of log p(token | everything before it), from
one forward pass over context + continuation; only continuation positions are read. A pair longer
than the window keeps its last max_length + 1 tokens (the context is cut from the left, as lm-eval's
HF model does). Requests are sorted by length, longest first, and batched (lm-eval's Collator, which
also merges requests that share context + continuation[:-1], so single-token choices cost one
pass); right padding is harmless under causal attention. Tokenizations are cached per string.

NOTE: every context starts with the end-of-text token (`prefix_eot`, on by default): the models are
trained on documents joined by that token, so it marks "a document starts here" exactly as in
training. lm-eval's HF model adds no such prefix for GPT-2-style tokenizers; set prefix_eot=False
to match that convention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator

log = logging.getLogger("evals")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_BATCH_SIZE = 32


def _as_batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        if value is not None:
            log.warning("batch_size %r: automatic sizing is not supported; using %d", value,
                        DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"batch_size must be a positive integer; got {value!r}") from None
    if size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {value!r}")
    return size


@register_model("periln")
class PerilnLM(TemplateLM):
    """An lm-eval LM over a suite model and tokenizer.

    In process: PerilnLM(model=..., tokenizer=...). From lm-eval's command line (see
    suite/lm_eval_cli.py): --model periln --model_args checkpoint=<run dir, .ckpt or run key>.
    """

    # How `checkpoint=` (lm-eval builds the model from --model_args strings) becomes (model,
    # tokenizer, checkpoint path), given (checkpoint, out_dir). Training checkpoints are the suite's
    # format, so the suite sets this before it runs lm-eval's command line (suite/lm_eval_cli.py);
    # evals itself never reads one.
    checkpoint_loader: ClassVar[Callable[[str, str], tuple[torch.nn.Module, Any, str]] | None] = None

    def __init__(self, model: torch.nn.Module | None = None, tokenizer: Any = None,
                 checkpoint: str | None = None, batch_size: int | str | None = DEFAULT_BATCH_SIZE,
                 device: str | None = None, max_length: int | None = None, dtype: str = "float32",
                 prefix_eot: bool = True, out_dir: str = "runs", max_batch_size: int | None = None,
                 **unknown: Any) -> None:
        super().__init__()
        if unknown:  # e.g. a misspelt --model_args key
            raise ValueError(f"periln model: unknown argument(s) {', '.join(sorted(unknown))}; known: "
                             "checkpoint, out_dir, batch_size, device, dtype, max_length, prefix_eot")
        self.checkpoint = None
        if checkpoint is not None:
            load = type(self).checkpoint_loader
            if load is None:
                raise ValueError("periln model: checkpoint= needs the suite's checkpoint loader; run lm-eval "
                                 "as `python -m suite.lm_eval_cli ...`")
            model, tokenizer, self.checkpoint = load(checkpoint, out_dir)
        if model is None or tokenizer is None:
            raise ValueError("PerilnLM needs model= and tokenizer=, or checkpoint=")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda by default; its HF model falls back the same way
            log.warning("device %s requested but no CUDA device is available: using the CPU", device)
            device = "cpu"
        self._device = torch.device(device)
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.dtype = DTYPES[dtype]
        self._max_length = int(max_length or model.cfg.max_seq_len)
        if not 1 <= self._max_length <= model.cfg.max_seq_len:  # RoPE tables end at max_seq_len
            raise ValueError(f"max_length must be in 1..{model.cfg.max_seq_len}; got {max_length}")
        self._batch_size = _as_batch_size(batch_size)
        self.prefix_eot = bool(prefix_eot)
        self._tok_cache: dict[str, list[int]] = {}
        # totals over this object's life: requests answered, forward passes' wall time, ...
        self.stats = {"requests": 0, "seconds": 0.0, "rows": 0, "truncated": 0, "split": 0}

    # ------------------------------------------------------------------------ lm-eval interface

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.spec

    def get_model_info(self) -> dict[str, Any]:
        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "checkpoint": self.checkpoint, "tokenizer": self.tokenizer.spec,
                "max_length": self.max_length, "prefix_eot": self.prefix_eot}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        ids = self._tok_cache.get(string)
        if ids is None:
            ids = self._tok_cache[string] = self.tokenizer.encode_batch([string])[0]
        return list(ids)

    def tok_decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _prefill(self, texts: set[str]) -> None:
        """Tokenize all new strings in one batch call (tiktoken and tokenizers run it in parallel)."""
        new = [t for t in texts if t not in self._tok_cache]
        for text, ids in zip(new, self.tokenizer.encode_batch(new) if new else []):
            self._tok_cache[text] = ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        return ([self.eot_token_id] + context_enc if self.prefix_eot else context_enc), continuation_enc

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        texts: set[str] = set()
        for context, continuation in (req.args for req in requests):
            if context == "":
                texts.add(continuation)
                continue
            n = len(context) - len(context.rstrip())  # TemplateLM moves trailing spaces to the continuation
            texts.add(context[:-n] if n else context)
            texts.add(context + continuation)
        self._prefill(texts)
        return super().loglikelihood(requests, disable_tqdm=True)

    def _model_call(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, V)."""
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=self.dtype,
                                                    enabled=self.dtype != torch.float32):
            return self.model(tokens.to(self._device))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) strings or None, context ids, continuation ids).

        A continuation longer than the window (a byte-level model on PIQA's or HellaSwag's long
        answers) is scored in pieces of max_length // 2 tokens, each piece as its own request
        (the context being everything before it, cut from the left): every token is predicted
        once, with at least half a window of context. lm-eval's HF model refuses such requests."""
        start = time.perf_counter()
        res = self._split_and_score(requests, override_bs)
        seconds = time.perf_counter() - start
        self.stats["requests"] += len(requests)
        self.stats["seconds"] += seconds
        log.info("scored %d requests in %.2f s (batch %d): %.1f requests/s", len(requests), seconds,
                 override_bs or self.batch_size, len(requests) / max(seconds, 1e-9))
        if self.stats["truncated"]:
            log.info("%d requests so far were longer than the window of %d tokens and were cut from "
                     "the left", self.stats["truncated"], self.max_length)
        return res

    def _split_and_score(self, requests, override_bs: int | None) -> list[tuple[float, bool]]:
        step = max(1, self.max_length // 2)
        pieces, owners = [], []
        for i, (req_str, context_enc, continuation_enc) in enumerate(requests):
            if len(continuation_enc) <= self.max_length:
                pieces.append((req_str, context_enc, continuation_enc))
                owners.append(i)
                continue
            self.stats["split"] += 1
            for s in range(0, len(continuation_enc), step):
                pieces.append((None, context_enc + continuation_enc[:s], continuation_enc[s:s + step]))
                owners.append(i)
        if len(pieces) == len(requests):
            return self._score(requests, override_bs)
        totals = [[0.0, True] for _ in requests]
        for i, (logprob, greedy) in zip(owners, self._score(pieces, override_bs)):
            totals[i][0] += logprob
            totals[i][1] &= greedy
        res = [(total, greedy) for total, greedy in totals]
        for (req_str, _, continuation_enc), answer in zip(requests, res):
            if req_str is not None and len(continuation_enc) > self.max_length:
                self.cache_hook.add_partial("loglikelihood", req_str, answer)
        log.info("%d continuations were longer than the window of %d tokens and were scored in "
                 "pieces of %d", self.stats["split"], self.max_length, step)
        return res

    def _score(self, requests, override_bs: int | None = None) -> list[tuple[float, bool]]:
        """Requests whose continuation fits the window (see _loglikelihood_tokens)."""
        res: list[tuple[float, bool]] = []

        def by_length(req):  # longest first: the first batch shows the peak memory at once
            toks = req[1] + req[2]
            return -len(toks), tuple(toks)

        order = Collator(requests, sort_fn=by_length, group_by="contexts",
                         group_fn=lambda req: req[1] + req[2][:-1])
        for chunk in order.get_batched(n=override_bs or self.batch_size):
            inputs, lengths = [], []
            for _, context_enc, continuation_enc in chunk:
                if not continuation_enc:
                    raise ValueError("an empty continuation cannot be scored")
                whole = context_enc + continuation_enc
                if len(whole) > self.max_length + 1:
                    self.stats["truncated"] += 1
                inp = whole[-(self.max_length + 1):][:-1]  # the last token is only a target
                inputs.append(inp)
                lengths.append(len(inp))
            width = max(lengths)
            batch = torch.zeros(len(inputs), width, dtype=torch.long)  # right padding (B, T)
            for i, inp in enumerate(inputs):
                batch[i, : len(inp)] = torch.tensor(inp, dtype=torch.long)
            logits = self._model_call(batch)  # (B, T, V)
            self.stats["rows"] += len(inputs)
            for (req_str, context_enc, continuation_enc), row, n_in in zip(chunk, logits, lengths):
                n_cont = len(continuation_enc)
                # positions n_in - n_cont .. n_in - 1 predict the continuation's tokens
                logprobs = F.log_softmax(row[n_in - n_cont: n_in].float(), dim=-1).unsqueeze(0)  # (1, C, V)
                for req_str_i, cont, lp in order.get_cache(req_str=req_str, cxt_toks=context_enc,
                                                           cont_toks=continuation_enc, logits=logprobs):
                    # requests merged with this one end where it ends: read the trailing positions
                    lp = lp[:, lp.shape[1] - len(cont):]  # (1, c, V)
                    target = torch.tensor(cont, dtype=torch.long, device=lp.device).view(1, -1, 1)
                    greedy = bool((lp.argmax(-1) == target.squeeze(-1)).all())
                    answer = (float(lp.gather(2, target).sum()), greedy)
                    res.append(answer)
                    if req_str_i is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str_i, answer)
        return order.get_original(res)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of max_length tokens, each token
        predicted once; the first window is conditioned on the end-of-text token (lm-eval's rule)."""
        windows, owners = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for context_enc, continuation_enc in map(
                    lm_utils.make_disjoint_window,
                    lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text),
                                                       prefix_token=self.eot_token_id,
                                                       max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context_enc, continuation_enc))
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows) if windows else []):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding, one request at a time, without a KV cache: correct, but meant for short
        generations (the paper's tasks are all multiple choice)."""
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = dict(gen_kwargs or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
                raise NotImplementedError("periln's generate_until decodes greedily only "
                                          "(do_sample=False, temperature=0)")
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            ids = ([self.eot_token_id] if self.prefix_eot else []) + self.tok_encode(context)
            new: list[int] = []
            text = ""
            for _ in range(max_new):
                window = torch.tensor([(ids + new)[-self.max_length:]], dtype=torch.long)
                token = int(self._model_call(window)[0, -1].argmax())
                if token == self.eot_token_id:
                    break
                new.append(token)
                text = self.tok_decode(new)
                if any(stop in text for stop in until):
                    break
            for stop in until:  # cut at the first stop sequence
                text = text.split(stop)[0] if stop else text
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

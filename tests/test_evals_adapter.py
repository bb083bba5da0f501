"""The lm-eval adapter's numbers equal a direct computation with the model, request by request.

The reference below runs the model once per scored token on exactly the tokens that precede it
(nothing batched, no slicing of a shared pass), with the byte tokenizer so every character is one
token and the expected token lists can be written by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
from lm_eval.api.instance import Instance

from evals.adapter import PerilnLM
from models import ModelConfig, build_model
from suite.tokenizer import ByteTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

EOT = 256
WINDOW = 16  # the model's max_seq_len: small, so truncation is easy to provoke



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=2, d_ff=64,
                                max_seq_len=WINDOW, init_std=0.2))
    return m.eval()


def lm_for(model, **kwargs) -> PerilnLM:
    return PerilnLM(model=model, tokenizer=ByteTokenizer(), device="cpu", **kwargs)


def ids(text: str) -> list[int]:
    return list(text.encode())


def next_logprobs(model, prefix: list[int]) -> torch.Tensor:
    """log p(. | prefix) from one forward pass over the prefix alone; (V,)."""
    with torch.no_grad():
        logits = model(torch.tensor([prefix]))[0, -1]
    return torch.log_softmax(logits.double(), -1)


def direct(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """sum_j log p(cont_j | tokens before it), every prediction seeing the tokens from the start of
    the last WINDOW + 1 tokens of context + continuation (lm-eval's left truncation)."""
    full = context + continuation
    start = max(0, len(full) - (WINDOW + 1))
    total, greedy = 0.0, True
    for j, token in enumerate(continuation):
        pos = len(context) + j
        lp = next_logprobs(model, full[start:pos])
        total += float(lp[token])
        greedy &= int(lp.argmax()) == token
    return total, greedy


def ll_requests(pairs):
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def test_loglikelihood_equals_direct_computation(model):
    lm = lm_for(model, batch_size=4)
    long_context = "Bipu likes kanu. Kiro lives in deza."  # 36 tokens + EOT > WINDOW
    pairs = [
        ("Hello worl", "d"),  # one-token continuation
        ("The cat", " sat on"),  # multi-token continuation
        (long_context, " Yes."),  # context longer than the window: cut from the left
        ("", "abc"),  # empty context: conditioned on the end-of-text token alone
        ("Answer: ", "yes"),  # lm-eval moves the context's trailing space into the continuation
        ("abc", "d"), ("abc", "e"), ("abc", "f"),  # one-token choices sharing a context: one pass
        ("abcd", "e"), ("ab", "cde"),  # same tokens, different split: merged by lm-eval's Collator
    ]
    # expected token lists, written out: [EOT] + context bytes, continuation bytes
    expected_tokens = [
        ([EOT] + ids("Hello worl"), ids("d")),
        ([EOT] + ids("The cat"), ids(" sat on")),
        ([EOT] + ids(long_context), ids(" Yes.")),
        ([EOT], ids("abc")),
        ([EOT] + ids("Answer:"), ids(" yes")),
        ([EOT] + ids("abc"), ids("d")), ([EOT] + ids("abc"), ids("e")), ([EOT] + ids("abc"), ids("f")),
        ([EOT] + ids("abcd"), ids("e")), ([EOT] + ids("ab"), ids("cde")),
    ]
    got = lm.loglikelihood(ll_requests(pairs))
    assert len(got) == len(pairs)
    for (ctx, cont), (logprob, greedy), (c_ids, k_ids) in zip(pairs, got, expected_tokens):
        want, want_greedy = direct(model, c_ids, k_ids)
        assert logprob == pytest.approx(want, abs=1e-4), (ctx, cont)
        assert greedy == want_greedy, (ctx, cont)
        assert logprob < 0
    assert lm.stats["requests"] == len(pairs)
    assert lm.stats["truncated"] == 1  # only the long context
    # the three one-token choices after "abc" and the two splits of "abcde" each share a pass
    assert lm.stats["rows"] == len(pairs) - 2 - 1


def test_truncation_keeps_the_last_window_plus_one_tokens(model):
    """A 36-token context + 5-token continuation: the scored pass sees tokens 24.. of the 41."""
    lm = lm_for(model)
    ctx, cont = "Bipu likes kanu. Kiro lives in deza.", " Yes."
    full = [EOT] + ids(ctx) + ids(cont)  # 42 tokens
    (got, _), = lm.loglikelihood(ll_requests([(ctx, cont)]))
    kept = full[len(full) - (WINDOW + 1):]  # 17 tokens: 16 inputs, the last one only a target
    want = sum(float(next_logprobs(model, kept[:i])[kept[i]]) for i in range(len(kept) - 5, len(kept)))
    assert got == pytest.approx(want, abs=1e-4)
    # and it differs from scoring with more context than the window (the model could not)
    assert not math.isclose(got, direct(model, [EOT] + ids(ctx)[-8:], ids(cont))[0], abs_tol=1e-3)


def test_continuation_longer_than_the_window_is_scored_in_pieces(model):
    """20 continuation tokens, window 16: pieces of 8 tokens, each cut to its last 17 tokens."""
    lm = lm_for(model)
    ctx, cont = "Hi", "abcdefghijklmnopqrst"
    full = [EOT] + ids(ctx) + ids(cont)  # 23 tokens; the continuation starts at 3
    # (piece start, piece end) in the continuation, and where the piece's window starts in `full`:
    # piece ends at 3 + end; its window holds the 17 tokens before that (or all of them)
    pieces = [(0, 8, 0), (8, 16, 2), (16, 20, 6)]
    want, greedy = 0.0, True
    for s, e, start in pieces:
        for p in range(3 + s, 3 + e):
            lp = next_logprobs(model, full[start:p])
            want += float(lp[full[p]])
            greedy &= int(lp.argmax()) == full[p]
    (got, got_greedy), = lm.loglikelihood(ll_requests([(ctx, cont)]))
    assert got == pytest.approx(want, abs=1e-4)
    assert got_greedy == greedy
    assert lm.stats["split"] == 1 and lm.stats["requests"] == 1


def test_batched_equals_one_by_one(model):
    pairs = [(f"ctx {i} " + "x" * (i % 7), " cont" + "y" * (i % 5)) for i in range(23)]
    batched = lm_for(model, batch_size=8).loglikelihood(ll_requests(pairs))
    single = lm_for(model, batch_size=1).loglikelihood(ll_requests(pairs))
    alone = [lm_for(model, batch_size=8).loglikelihood(ll_requests([p]))[0] for p in pairs]
    for b, s, a in zip(batched, single, alone):
        assert b[0] == pytest.approx(s[0], abs=1e-4) == pytest.approx(a[0], abs=1e-4)
        assert b[1] == s[1] == a[1]


def test_prefix_eot_off_scores_the_bare_context(model):
    lm = lm_for(model, prefix_eot=False)
    (got, _), = lm.loglikelihood(ll_requests([("The cat", " sat")]))
    assert got == pytest.approx(direct(model, ids("The cat"), ids(" sat"))[0], abs=1e-4)


def test_loglikelihood_rolling_windows(model):
    """lm-eval's rolling rule with a window of 16, written out for 40 and 5 tokens: disjoint
    windows, every token predicted once, the first from the end-of-text token."""
    lm = lm_for(model, batch_size=2)
    text = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"  # 40 tokens
    x = ids(text)
    windows = [  # (inputs, number of predicted tokens at the end of the inputs + 1)
        ([EOT] + x[0:15], x[0:16]),
        (x[15:31], x[16:32]),
        (x[23:39], x[32:40]),  # the last window takes a full window of context
    ]
    want = 0.0
    for inputs, predicted in windows:
        n = len(predicted)
        seq = inputs + [predicted[-1]]
        for i in range(len(seq) - n, len(seq)):
            want += float(next_logprobs(model, seq[:i])[seq[i]])
    short = "hello"
    want_short = sum(float(next_logprobs(model, ([EOT] + ids(short))[:i])[ids(short)[i - 1]])
                     for i in range(1, 6))
    reqs = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate([text, short])]
    got = lm.loglikelihood_rolling(reqs)
    assert got[0] == pytest.approx(want, abs=1e-3)
    assert got[1] == pytest.approx(want_short, abs=1e-4)


def test_generate_until_is_greedy_and_stops(model):
    lm = lm_for(model)
    context = "abc"
    tokens, new = [EOT] + ids(context), []
    for _ in range(6):  # greedy decoding by hand
        token = int(next_logprobs(model, (tokens + new)[-WINDOW:]).argmax())
        if token == EOT:
            break
        new.append(token)
    full = ByteTokenizer().decode(new)
    stop = full[2] if len(full) > 2 else "\x00"  # a stop string the greedy text contains
    out = lm.generate_until([
        Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": 6}), 0),
        Instance("generate_until", {}, (context, {"until": [stop], "max_gen_toks": 6}), 1),
    ])
    assert out[0] == full
    assert out[1] == full.split(stop)[0]
    with pytest.raises(NotImplementedError, match="greedily"):
        lm.generate_until([Instance("generate_until", {}, (context, {"do_sample": True}), 0)])


def test_tokenizations_are_cached(model):
    class Counting(ByteTokenizer):
        calls = 0

        def encode_batch(self, texts):
            Counting.calls += len(texts)
            return super().encode_batch(texts)

    lm = PerilnLM(model=model, tokenizer=Counting(), device="cpu")
    pairs = [("Question: which?\nAnswer:", f" choice {i}") for i in range(4)]
    lm.loglikelihood(ll_requests(pairs))
    # one context + four context+continuation strings, each encoded once
    assert Counting.calls == 5
    lm.loglikelihood(ll_requests(pairs))
    assert Counting.calls == 5


def test_batch_size_argument():
    model = build_model(ModelConfig(vocab_size=257, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                    max_seq_len=8))
    assert lm_for(model, batch_size="16").batch_size == 16
    assert lm_for(model, batch_size="auto").batch_size == 32  # no automatic sizing: the default
    with pytest.raises(ValueError, match="positive integer"):
        lm_for(model, batch_size=0)

"""models/loss.py: the chunked LM head + cross-entropy against the plain loss, in value and in the
gradient of every parameter (fp32, padded and unpadded vocabulary, tied and untied embeddings),
in eager and under torch.compile."""

import math

import pytest
import torch
import torch.nn.functional as F

from models import ModelConfig, build_model
from models.loss import linear_cross_entropy


def plain_loss(model, x, y):
    """The reference: the model's sliced logits, upcast, F.cross_entropy (the old training loss)."""
    return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())


def chunked_loss(model, x, y, chunk_rows=None):
    h = model.features(x)
    return linear_cross_entropy(h.flatten(0, 1), model.lm_head.weight, y.flatten(),
                                model.cfg.vocab_size, chunk_rows=chunk_rows)


def grads(model, loss_fn, x, y, **kw):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, x, y, **kw)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def make(vocab=61, pad=16, tie=False, placement="peri_ln", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, pad_vocab_to=pad, tie_embeddings=tie, d_model=32, n_layers=2,
                      n_heads=4, max_seq_len=16, placement=placement)
    return build_model(cfg)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("pad", [1, 16])  # 61 -> 61 (no padding) and 61 -> 64 (3 padded rows)
@pytest.mark.parametrize("chunk_rows", [None, 7])  # one chunk; 7 rows: chunks of unequal size
def test_matches_plain_loss_and_every_gradient(tie, pad, chunk_rows):
    model = make(pad=pad, tie=tie)
    assert model.cfg.padded_vocab == (64 if pad == 16 else 61)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 61, (3, 10), generator=g), torch.randint(0, 61, (3, 10), generator=g)
    ref_loss, ref = grads(model, plain_loss, x, y)
    loss, got = grads(model, chunked_loss, x, y, chunk_rows=chunk_rows)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert got.keys() == ref.keys() and len(ref) > 5
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)
    if pad > 1:  # padded rows of the head get exactly zero gradient (no token ever lands there)
        head = "embed.weight" if tie else "lm_head.weight"  # tied: one parameter, one name
        assert torch.equal(got[head][61:], torch.zeros(3, 32))


def test_value_by_hand():
    """A 2-row, 3-class case written out: loss = mean(logsumexp(z) - z[target]); one padded row."""
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 5.0]], requires_grad=True)  # row 3 pad
    y = torch.tensor([0, 2])
    # logits row 0: [1, 0, 1]; row 1: [0, 2, 2]; the pad column (5, 10) must not count
    want = ((math.log(2 * math.e + 1) - 1) + (math.log(1 + 2 * math.e ** 2) - 2)) / 2
    loss = linear_cross_entropy(h, w, y, vocab_size=3, chunk_rows=1)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert torch.equal(w.grad[3], torch.zeros(2))
    # d loss / d h row 0 = (softmax(z0) - onehot(0)) @ W[:3] / 2
    p0 = torch.tensor([math.e, 1.0, math.e]) / (2 * math.e + 1) - torch.tensor([1.0, 0, 0])
    torch.testing.assert_close(h.grad[0], p0 @ w.detach()[:3] / 2)


def test_ignore_index_and_no_grad_path():
    model = make(pad=16)
    x, y = torch.randint(0, 61, (2, 8)), torch.randint(0, 61, (2, 8))
    y[0, :3] = -100
    want = F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())  # ignore_index=-100 too
    loss, _ = grads(model, chunked_loss, x, y, chunk_rows=5)
    torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # loss only: no gradients computed, same value
        torch.testing.assert_close(chunked_loss(model, x, y, chunk_rows=5), want.detach(),
                                   rtol=1e-6, atol=1e-6)


def test_bf16_autocast_close_to_plain():
    """Under CPU bf16 autocast both losses run the head in bf16: close, not equal (bf16 rounding)."""
    model = make(pad=16)
    x, y = torch.randint(0, 61, (2, 8)), torch.randint(0, 61, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, ref = grads(model, plain_loss, x, y)
        loss, got = grads(model, chunked_loss, x, y, chunk_rows=5)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    for name in ref:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], ref[name], rtol=5e-2, atol=2e-3, msg=name)


@pytest.mark.parametrize("tie", [False, True])
def test_compiled_matches_eager_plain(tie):
    model = make(pad=16, tie=tie)
    x, y = torch.randint(0, 61, (2, 8)), torch.randint(0, 61, (2, 8))
    ref_loss, ref = grads(model, plain_loss, x, y)
    torch._dynamo.reset()
    compiled = torch.compile(chunked_loss, dynamic=False, fullgraph=True)  # no graph break
    loss, got = grads(model, compiled, x, y, chunk_rows=5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)

"""The paper's three placements against their equations, written out by hand (docs/paper.md section 1)."""

import math

import pytest
import torch

from models import ModelConfig, build_model
from models.placements import PLACEMENTS, get_placement, load_all

D = 32


@pytest.fixture(autouse=True)
def float64():
    """Equations are compared in float64; restored afterwards so other test files are unaffected."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def rms(x, w, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ln(x, w, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w


def model(placement, norm="rmsnorm", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, d_model=D, n_layers=3, n_heads=4, max_seq_len=16,
                      placement=placement, norm=norm, **kw)
    m = build_model(cfg).double()
    # random gains, so a norm used in the wrong slot cannot hide behind a gain of one
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m


def sublayers(block):
    return block.attn, block.mlp


@pytest.fixture(params=["rmsnorm", "layernorm"])
def norm(request):
    return request.param


def test_pre_ln_block(norm):
    N = rms if norm == "rmsnorm" else ln
    b = model("pre_ln", norm).blocks[1]
    x = torch.randn(2, 7, D)
    h = x + b.attn(N(x, b.attn_in_norm.weight))
    y = h + b.mlp(N(h, b.mlp_in_norm.weight))
    torch.testing.assert_close(b(x), y)


def test_post_ln_block(norm):
    N = rms if norm == "rmsnorm" else ln
    b = model("post_ln", norm).blocks[1]
    x = torch.randn(2, 7, D)
    h = N(x + b.attn(x), b.attn_post_norm.weight)
    y = N(h + b.mlp(h), b.mlp_post_norm.weight)
    torch.testing.assert_close(b(x), y)


def test_peri_ln_block_normalizes_output_before_the_add(norm):
    N = rms if norm == "rmsnorm" else ln
    b = model("peri_ln", norm).blocks[1]
    x = torch.randn(2, 7, D)
    h = x + N(b.attn(N(x, b.attn_in_norm.weight)), b.attn_out_norm.weight)
    y = h + N(b.mlp(N(h, b.mlp_in_norm.weight)), b.mlp_out_norm.weight)
    torch.testing.assert_close(b(x), y)
    n_norms = sum(1 for n, _ in b.named_parameters() if n.endswith("norm.weight"))
    assert n_norms == 4


def test_model_level_norms():
    x = torch.randint(0, 50, (2, 7))
    for placement, embed_norm, final_norm in (("pre_ln", False, True), ("post_ln", False, False),
                                              ("peri_ln", True, True)):
        m = model(placement)
        logits, hidden = m(x, return_hidden=True)
        e = m.embed(x)
        h0 = rms(e, m.embed_norm.weight) if embed_norm else e
        torch.testing.assert_close(hidden[0], h0)
        z = hidden[-1]
        expect = m.lm_head(rms(z, m.final_norm.weight) if final_norm else z)
        torch.testing.assert_close(logits, expect)
    # the knob turns Peri-LN's embedding norm off
    m = model("peri_ln", embed_norm=False)
    _, hidden = m(x, return_hidden=True)
    torch.testing.assert_close(hidden[0], m.embed(x))


def test_sandwich_ln_is_peri_ln():
    x = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(model("sandwich_ln")(x), model("peri_ln")(x))
    assert PLACEMENTS["sandwich_ln"] is PLACEMENTS["peri_ln"]


def test_peri_ln_variance_grows_by_two_per_block_at_init():
    """Each block adds two unit-variance normalized outputs (gain 1 at init) to the stream, nearly
    uncorrelated with it: Var(h_l) ~ Var(h0) + 2 l."""
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=512, d_model=256, n_layers=8, n_heads=8, max_seq_len=64,
                      placement="peri_ln")
    m = build_model(cfg).double()
    _, hidden = m(torch.randint(0, 512, (4, 64)), return_hidden=True)
    v0 = hidden[0].var().item()
    for layer in range(1, 9):
        assert hidden[layer].var().item() == pytest.approx(v0 + 2 * layer, rel=0.1)


def test_unknown_placement_lists_known_and_suggests():
    with pytest.raises(ValueError) as err:
        get_placement("peri-ln")
    msg = str(err.value)
    assert "Did you mean peri_ln" in msg and "pre_ln" in msg and "\n" not in msg


def test_registry_has_the_papers_placements():
    names = set(load_all())
    assert {"pre_ln", "post_ln", "peri_ln", "sandwich_ln"} <= names


def test_scaled_init_divides_output_projection_std():
    L = 12
    cfg = ModelConfig(vocab_size=64, d_model=256, n_layers=L, n_heads=4, init_scheme="scaled")
    torch.manual_seed(0)
    m = build_model(cfg)
    o = torch.cat([b.attn.o_proj.weight.flatten() for b in m.blocks])
    q = torch.cat([b.attn.q_proj.weight.flatten() for b in m.blocks])
    assert q.std().item() == pytest.approx(0.02, rel=0.02)
    assert o.std().item() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.02)

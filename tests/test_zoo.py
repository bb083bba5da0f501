"""The placement zoo (docs/paper.md section 4): every arm against its equation written out by hand
(float64, random inputs, random gains), each arm's init rule, the Jiang et al. equivalence, and the
generic checks that every registered placement passes automatically."""

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from models import ConfigError, ModelConfig, build_model
from models.placements import PLACEMENTS, get_placement, load_all

D, H, V = 32, 4, 50
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def float32_one_thread():
    """Each test states its dtype (another module's set_default_dtype must not leak in); one
    thread, as intra-op parallelism buys nothing on these tiny models and costs a lot on a busy
    machine."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the equations' ingredients

def rms(x, w, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def ln(x, w, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt((x - mu).pow(2).mean(-1, keepdim=True) + eps) * w


def norm_fn(kind):
    return rms if kind == "rmsnorm" else ln


def rope(x, theta=10000.0):
    """Half-split rotary embedding of x (B, H, T, hd), angle = position x theta^(-2i/hd)."""
    hd, T = x.shape[-1], x.shape[-2]
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # (T, hd/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def attention(a, x, qk="none", v_norm=False):
    """Causal multi-head attention by hand from the module's weights; qk: none | head | full."""
    B, T, _ = x.shape
    nh, hd = a.n_heads, a.hd
    q, k, v = x @ a.q_proj.weight.T, x @ a.k_proj.weight.T, x @ a.v_proj.weight.T
    if qk == "full":  # over the whole projected width
        q, k = rms(q, a.q_norm.weight), rms(k, a.k_norm.weight)

    def heads(t):
        return t.view(B, T, nh, hd).transpose(1, 2)  # (B, H, T, hd)

    q, k, v = heads(q), heads(k), heads(v)
    if v_norm:
        v = rms(v, a.v_norm.weight)
    if qk == "head":
        q, k = rms(q, a.q_norm.weight), rms(k, a.k_norm.weight)
    q, k = rope(q), rope(k)
    s = q @ k.transpose(-1, -2) / math.sqrt(hd)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    y = torch.softmax(s, dim=-1) @ v  # (B, H, T, hd)
    return y.transpose(1, 2).reshape(B, T, nh * hd) @ a.o_proj.weight.T


def mlp(m, x):
    return (F.silu(x @ m.gate_proj.weight.T) * (x @ m.up_proj.weight.T)) @ m.down_proj.weight.T


def model(placement, norm="rmsnorm", n_layers=3, **kw):
    """A float64 model whose 1-D parameters (gains, DyT's a and beta) are random, so a norm in the
    wrong slot cannot hide behind a unit gain."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=D, n_layers=n_layers, n_heads=H, max_seq_len=16,
                      placement=placement, norm=norm, **kw)
    m = build_model(cfg).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1:
                leaf = name.rsplit(".", 1)[-1]
                if leaf == "bias":
                    p.normal_(0.0, 0.3)
                else:
                    p.uniform_(0.5, 1.5)
    return m


def x_in():
    torch.manual_seed(1)
    return torch.randn(2, 7, D, dtype=torch.float64)


TOL = dict(rtol=1e-6, atol=1e-6)  # the model's RoPE tables are float32; everything else float64


@pytest.fixture(params=["rmsnorm", "layernorm"])
def norm(request):
    return request.param


# ------------------------------------------------------------------------ one test per arm

def test_olmo2_block(norm):
    N = norm_fn(norm)
    m = model("olmo2", norm, norm_eps=1e-5)  # the hand-written norms below use eps 1e-5
    b, x = m.blocks[1], x_in()
    h = x + N(attention(b.attn, x, qk="full"), b.attn_out_norm.weight)
    y = h + N(mlp(b.mlp, h), b.mlp_out_norm.weight)
    torch.testing.assert_close(b(x), y, **TOL)
    assert b.attn.q_norm.weight.shape == (D,)  # full width, not per head
    assert isinstance(m.embed_norm, torch.nn.Identity) and not isinstance(m.final_norm, torch.nn.Identity)


def test_olmo2_norm_eps_defaults_to_1e_6_unless_the_run_sets_it():
    m = build_model(ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=H, placement="olmo2"))
    norms = [mod for mod in m.modules() if hasattr(mod, "eps")]
    assert norms and all(mod.eps == 1e-6 for mod in norms) and m.cfg.norm_eps == 1e-6
    m = build_model(ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=H, placement="olmo2",
                                norm_eps=1e-5))
    assert all(mod.eps == 1e-5 for mod in m.modules() if hasattr(mod, "eps"))
    pre = build_model(ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=H))
    assert all(mod.eps == 1e-5 for mod in pre.modules() if hasattr(mod, "eps"))  # the others: 1e-5


def test_b2t_rescales_every_non_norm_block_weight_by_one_over_sqrt_depth():
    # takase/b2t_connection `rescaling_init`: weights (not norms) of each layer x n_layers^-0.5
    L = 16
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=512, d_model=256, n_layers=L, n_heads=4, placement="b2t"))
    w = torch.cat([p.flatten() for b in m.blocks for n, p in b.named_parameters() if p.ndim >= 2])
    assert w.std().item() == pytest.approx(0.02 / L ** 0.5, rel=0.02)
    assert m.embed.weight.std().item() == pytest.approx(0.02, rel=0.02)  # outside the blocks: as is
    assert all((p == 1).all() for b in m.blocks for n, p in b.named_parameters() if "norm" in n)


def test_olmo2_init_is_truncated_normal_without_depth_scaling():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=512, d_model=256, n_layers=8, n_heads=4,
                                placement="olmo2", init_scheme="scaled"))
    for name in ("q_proj", "o_proj"):
        w = torch.cat([getattr(b.attn, name).weight.flatten() for b in m.blocks])
        # N(0, 0.02) truncated at 3 std has std 0.02 * 0.9866
        assert w.std().item() == pytest.approx(0.02 * 0.9866, rel=0.02), name
        assert w.abs().max().item() <= 3 * 0.02 + 1e-9


def test_gemma_block_and_offset_gains():
    m = model("gemma")
    b, x = m.blocks[1], x_in()

    def N(t, w):
        return rms(t, 1.0 + w, eps=1e-5)

    h = x + N(attention(b.attn, N(x, b.attn_in_norm.weight)), b.attn_out_norm.weight)
    y = h + N(mlp(b.mlp, N(h, b.mlp_in_norm.weight)), b.mlp_out_norm.weight)
    torch.testing.assert_close(b(x), y, **TOL)
    tokens = torch.randint(0, V, (2, 7))
    logits, hidden = m(tokens, return_hidden=True)
    torch.testing.assert_close(hidden[0], m.embed(tokens) * math.sqrt(D))  # no embedding norm
    torch.testing.assert_close(logits, m.lm_head(N(hidden[-1], m.final_norm.weight)))
    fresh = build_model(ModelConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=H, placement="gemma"))
    offsets = [p for n, p in fresh.named_parameters() if n.endswith("norm.weight")]
    assert len(offsets) == 2 * 4 + 1 and all((p == 0).all() for p in offsets)  # gain 1 + 0


def test_mix_ln_post_ln_first_then_pre_ln(norm):
    N = norm_fn(norm)
    m = model("mix_ln", norm, n_layers=4, placement_args={"alpha": 0.5})  # floor(0.5 * 4) = 2
    x = x_in()
    for i in (0, 1):  # blocks 1, 2: Post-LN
        b = m.blocks[i]
        h = N(x + attention(b.attn, x), b.attn_post_norm.weight)
        torch.testing.assert_close(b(x), N(h + mlp(b.mlp, h), b.mlp_post_norm.weight), **TOL)
    for i in (2, 3):  # blocks 3, 4: Pre-LN
        b = m.blocks[i]
        h = x + attention(b.attn, N(x, b.attn_in_norm.weight))
        torch.testing.assert_close(b(x), h + mlp(b.mlp, N(h, b.mlp_in_norm.weight)), **TOL)
    assert not isinstance(m.final_norm, torch.nn.Identity)


@pytest.mark.parametrize("alpha, n_layers, n_post", [(0.25, 4, 1), (0.25, 8, 2), (0.3, 3, 0),
                                                     (0.0, 6, 0), (1.0, 3, 3), ("1e-1", 20, 2)])
def test_mix_ln_post_ln_share_is_floor_alpha_L(alpha, n_layers, n_post):
    p = get_placement("mix_ln", alpha=alpha)
    post = [lay for lay in range(1, n_layers + 1) if p.layout(lay, n_layers).attn.post_norm]
    assert post == list(range(1, n_post + 1))
    assert get_placement("mix_ln").values["alpha"] == 0.25  # the paper's default


@pytest.mark.parametrize("alpha", [1.5, -0.1, "a lot", True])
def test_mix_ln_rejects_bad_alpha(alpha):
    with pytest.raises(ConfigError, match="alpha must be a number in"):
        get_placement("mix_ln", alpha=alpha)


def test_lns_scales_both_input_norms_by_one_over_sqrt_l(norm):
    N = norm_fn(norm)
    m = model("lns", norm, n_layers=4)
    x = x_in()
    for l in (1, 3, 4):
        b = m.blocks[l - 1]
        s = 1.0 / math.sqrt(l)
        h = x + attention(b.attn, N(x, b.attn_in_norm.weight) * s)
        torch.testing.assert_close(b(x), h + mlp(b.mlp, N(h, b.mlp_in_norm.weight) * s), **TOL)


def test_lns_init_is_plain_normal_even_when_scaled_init_is_asked_for():
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=64, d_model=256, n_layers=12, n_heads=4,
                                placement="lns", init_scheme="scaled"))
    o = torch.cat([b.attn.o_proj.weight.flatten() for b in m.blocks])
    assert o.std().item() == pytest.approx(0.02, rel=0.02)  # not 0.02 / sqrt(24)


def test_deepnorm_block(norm):
    N = norm_fn(norm)
    L = 3
    m = model("deepnorm", norm, n_layers=L)
    b, x = m.blocks[1], x_in()
    alpha = (2 * L) ** 0.25
    h = N(alpha * x + attention(b.attn, x), b.attn_post_norm.weight)
    torch.testing.assert_close(b(x), N(alpha * h + mlp(b.mlp, h), b.mlp_post_norm.weight), **TOL)
    assert isinstance(m.final_norm, torch.nn.Identity)


def test_deepnorm_init_xavier_normal_with_beta():
    L, d, f = 6, 256, 512
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=64, d_model=d, n_layers=L, n_heads=4, d_ff=f,
                                placement="deepnorm"))
    beta = (8 * L) ** -0.25

    def std(attr):
        return torch.cat([b.get_submodule(attr).weight.flatten() for b in m.blocks]).std().item()

    xavier_dd, xavier_df = math.sqrt(2 / (d + d)), math.sqrt(2 / (d + f))
    assert std("attn.q_proj") == pytest.approx(xavier_dd, rel=0.02)
    assert std("attn.k_proj") == pytest.approx(xavier_dd, rel=0.02)
    assert std("attn.v_proj") == pytest.approx(beta * xavier_dd, rel=0.02)
    assert std("attn.o_proj") == pytest.approx(beta * xavier_dd, rel=0.02)
    for name in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert std(name) == pytest.approx(beta * xavier_df, rel=0.02), name
    assert m.embed.weight.std().item() == pytest.approx(0.02, rel=0.02)


def test_b2t_block(norm):
    N = norm_fn(norm)
    m = model("b2t", norm)
    b, x = m.blocks[1], x_in()
    h = N(x + attention(b.attn, x), b.attn_post_norm.weight)
    torch.testing.assert_close(b(x), N(x + h + mlp(b.mlp, h), b.mlp_post_norm.weight), **TOL)
    assert isinstance(m.final_norm, torch.nn.Identity)


def test_hybridnorm_blocks(norm):
    N = norm_fn(norm)
    m = model("hybridnorm", norm, placement_args={"star": True})
    x = x_in()
    b = m.blocks[1]  # HybridNorm: QKV-norm attention on the raw stream, normalized residual in the MLP
    h = x + attention(b.attn, x, qk="head", v_norm=True)
    u = N(h, b.mlp_norm.weight)
    torch.testing.assert_close(b(x), u + mlp(b.mlp, u), **TOL)
    b = m.blocks[0]  # HybridNorm*: block 1 fully Pre-Norm, QKV-norm kept
    h = x + attention(b.attn, N(x, b.attn_in_norm.weight), qk="head", v_norm=True)
    torch.testing.assert_close(b(x), h + mlp(b.mlp, N(h, b.mlp_norm.weight)), **TOL)
    # plain HybridNorm (the default, as the reference's 1.2B config): block 1 like the others
    b = model("hybridnorm", norm).blocks[0]
    h = x + attention(b.attn, x, qk="head", v_norm=True)
    u = N(h, b.mlp_norm.weight)
    torch.testing.assert_close(b(x), u + mlp(b.mlp, u), **TOL)
    assert b.attn.v_norm.weight.shape == (D // H,)  # per head


def test_dyt_replaces_every_norm():
    m = model("dyt", placement_args={"bias": True})  # random gains and betas: every slot shows
    b, x = m.blocks[1], x_in()

    def dyt(t, n):
        return n.weight * torch.tanh(n.alpha * t) + n.bias

    h = x + attention(b.attn, dyt(x, b.attn_in_norm))
    torch.testing.assert_close(b(x), h + mlp(b.mlp, dyt(h, b.mlp_in_norm)), **TOL)
    tokens = torch.randint(0, V, (2, 7))
    logits, hidden = m(tokens, return_hidden=True)
    torch.testing.assert_close(hidden[0], m.embed(tokens) * m.embed_norm.scale)  # h0 = s * embed
    torch.testing.assert_close(logits, m.lm_head(dyt(hidden[-1], m.final_norm)))
    with pytest.raises(ConfigError, match="alpha0_attn must be a positive number"):
        get_placement("dyt", alpha0_attn=0)


def test_dyt_language_model_recipe_at_init():
    # the reference's LLaMA recipe: no beta, a0 = 0.8 (attention inputs) / 0.2 (MLP inputs, final
    # norm), and s0 = sqrt(d) on the embedding
    d, L = 256, 32
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=512, d_model=d, n_layers=L, n_heads=4, placement="dyt"))
    assert all(b.attn_in_norm.alpha.item() == pytest.approx(0.8) for b in m.blocks)
    assert all(b.mlp_in_norm.alpha.item() == pytest.approx(0.2) for b in m.blocks)
    assert m.final_norm.alpha.item() == pytest.approx(0.2) and m.final_norm.bias is None
    assert m.embed_norm.scale.item() == pytest.approx(d ** 0.5)
    _, hidden = m(torch.randint(0, 512, (2, 64)), return_hidden=True)
    # Var(h0) = (0.02 sqrt(d))^2 = 4e-4 d = 0.1024, where without the embedding scalar the stream
    # starts (and, the blocks adding little at init, stays) at Var = 0.02^2 = 4e-4
    assert hidden[0].var().item() == pytest.approx(4e-4 * d, rel=0.1)
    assert hidden[-1].var().item() > hidden[0].var().item()
    torch.manual_seed(0)
    plain = build_model(ModelConfig(vocab_size=512, d_model=d, n_layers=L, n_heads=4, placement="dyt",
                                    embed_norm=False))
    _, hidden = plain(torch.randint(0, 512, (2, 64)), return_hidden=True)
    assert hidden[-1].var().item() == pytest.approx(4e-4, rel=0.2)


def test_rezero_block_and_identity_at_init():
    m = model("rezero")  # alpha random in [0.5, 1.5] per block: the gate shows in every sub-layer
    b, x = m.blocks[1], x_in()
    a = b.alpha
    h = x + a * attention(b.attn, x)
    torch.testing.assert_close(b(x), h + a * mlp(b.mlp, h), **TOL)
    assert b.alpha.shape == (1,) and not [mod for mod in m.modules() if "Norm" in type(mod).__name__]
    # as built: alpha = 0, every block the identity, no final norm: logits = LM head of the embedding
    fresh = tiny("rezero")
    assert all(blk.alpha.item() == 0.0 for blk in fresh.blocks)
    assert isinstance(fresh.final_norm, torch.nn.Identity) and isinstance(fresh.embed_norm, torch.nn.Identity)
    tokens = torch.randint(0, V, (2, 9))
    torch.testing.assert_close(fresh(tokens), fresh.lm_head(fresh.embed(tokens)), rtol=0, atol=0)
    assert PLACEMENTS["rezero"].zero_init_gate and not PLACEMENTS["pre_ln"].zero_init_gate


def test_pre_ln_embed_norm(norm):
    N = norm_fn(norm)
    m = model("pre_ln_embed_norm", norm)
    b, x = m.blocks[1], x_in()
    h = x + attention(b.attn, N(x, b.attn_in_norm.weight))
    torch.testing.assert_close(b(x), h + mlp(b.mlp, N(h, b.mlp_in_norm.weight)), **TOL)
    tokens = torch.randint(0, V, (2, 7))
    logits, hidden = m(tokens, return_hidden=True)
    torch.testing.assert_close(hidden[0], N(m.embed(tokens), m.embed_norm.weight))
    torch.testing.assert_close(logits, m.lm_head(N(hidden[-1], m.final_norm.weight)))


def test_every_section_4_arm_is_registered_with_equation_and_source():
    arms = {"olmo2", "gemma", "mix_ln", "lns", "deepnorm", "b2t", "hybridnorm", "dyt",
            "pre_ln_embed_norm"}
    registry = load_all()
    assert arms <= set(registry)
    for name in arms:
        cls = registry[name]
        assert "=" in cls.equation() and cls.source, name


# ------------------------------------------------------------------------ Jiang et al. 2023

def test_pre_layernorm_equals_pre_rmsnorm_once_the_residual_branch_is_recentred():
    """Jiang et al. (arXiv 2305.14858): if everything that writes into the residual stream has
    zero mean across d, LayerNorm's mean subtraction is a no-op, so Pre-LN with LayerNorm and with
    RMSNorm compute the same function (final norm included)."""
    cfg = dict(vocab_size=V, d_model=D, n_layers=3, n_heads=H, max_seq_len=16, placement="pre_ln")
    torch.manual_seed(0)
    a = build_model(ModelConfig(norm="layernorm", **cfg)).double()
    with torch.no_grad():
        for p in a.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
        a.embed.weight -= a.embed.weight.mean(dim=1, keepdim=True)  # each row: zero mean over d
        for blk in a.blocks:  # output columns of the stream writers: zero mean over d
            for w in (blk.attn.o_proj.weight, blk.mlp.down_proj.weight):  # (d, in)
                w -= w.mean(dim=0, keepdim=True)
    b = build_model(ModelConfig(norm="rmsnorm", **cfg)).double()
    b.load_state_dict(a.state_dict())
    tokens = torch.randint(0, V, (3, 12))
    la, ha = a(tokens, return_hidden=True)
    lb, hb = b(tokens, return_hidden=True)
    assert max(h.mean(-1).abs().max().item() for h in ha) < 1e-12  # the stream stays centred
    torch.testing.assert_close(la, lb, rtol=1e-10, atol=1e-10)
    # without the recentring the two differ: the test can fail
    torch.manual_seed(0)
    c = build_model(ModelConfig(norm="layernorm", **cfg)).double()
    d = build_model(ModelConfig(norm="rmsnorm", **cfg)).double()
    d.load_state_dict(c.state_dict())
    assert (c(tokens) - d(tokens)).abs().max().item() > 1e-4


# ------------------------------------------- generic checks: every registered placement, automatically

ALL = sorted(load_all())


def tiny(placement, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=V, d_model=D, n_layers=3, n_heads=H, max_seq_len=32,
                                   placement=placement, **kw))


def _loss_backward(m, tokens):
    m.zero_grad(set_to_none=True)
    logits = m(tokens)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()).backward()


def assert_every_parameter_learns(m, placement):
    """Every parameter gets a finite, non-zero gradient. A placement that declares
    `zero_init_gate` (its residual gates start at exactly 0) must show it: some weights get an
    exactly zero gradient at init; one update (SGD, which moves the gates: they have a gradient)
    opens the gates, and then every parameter gets one."""
    cls = PLACEMENTS[placement]
    tokens = torch.randint(0, V, (2, 16))
    _loss_backward(m, tokens)
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{placement}: {name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{placement}: {name}"
    silent = [name for name, p in m.named_parameters() if not p.grad.abs().sum() > 0]
    if cls.zero_init_gate:
        assert silent, f"{placement} declares zero_init_gate, but every weight has a gradient at init"
        with torch.no_grad():
            for p in m.parameters():
                p -= 0.1 * p.grad
        _loss_backward(m, tokens)
        silent = [name for name, p in m.named_parameters() if not p.grad.abs().sum() > 0]
    assert not silent, (f"{placement}: {silent[:3]} got a zero gradient" + (
        "" if cls.zero_init_gate else " (a gate that starts at 0 by design? declare zero_init_gate = "
        "True on the placement: README, \"Add a placement\")"))


@pytest.mark.parametrize("placement", ALL)
def test_finite_forward_backward_and_every_parameter_gets_a_gradient(placement):
    assert_every_parameter_learns(tiny(placement), placement)


@pytest.mark.parametrize("placement", ALL)
def test_causal(placement):
    m = tiny(placement)
    x = torch.randint(0, V, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, V, (2, 8))
    a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("placement", ALL)
def test_state_dict_round_trip(placement):
    a, b = tiny(placement, seed=0), tiny(placement, seed=1)
    tokens = torch.randint(0, V, (2, 10))
    assert not torch.allclose(a(tokens), b(tokens))
    b.load_state_dict(a.state_dict())  # strict: the same keys and shapes
    torch.testing.assert_close(a(tokens), b(tokens), rtol=0, atol=0)


def synthetic_stream(n_docs=200):
    from suite import synthetic
    from suite.tokenizer import load_tokenizer

    tok = load_tokenizer("byte")
    ids = []
    for doc in tok.encode_batch(synthetic.documents(n_docs, seed=0)):
        ids += doc + [tok.eot_id]
    return torch.tensor(ids)


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream()


@pytest.mark.parametrize("placement", ALL)
def test_loss_falls_on_the_synthetic_corpus(placement, stream):
    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=4, d_ff=96,
                                max_seq_len=64, placement=placement))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        starts = torch.randint(0, len(stream) - 49, (8,), generator=g)
        batch = torch.stack([stream[s:s + 49] for s in starts.tolist()])  # (8, 48 + 1)
        loss = F.cross_entropy(m(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert math.isfinite(last) and last < first - 1.0, (placement, first, last)


def test_zoo_sweep_runs_every_registered_arm():
    from suite.sweep import load_sweep

    sweep = load_sweep(README.parent / "sweeps" / "zoo.yaml")
    missing = {cls.name for cls in load_all().values()} - {c.placement for c in sweep.cells}
    assert not missing, f"add {sorted(missing)} to grid.placement in sweeps/zoo.yaml"
    assert {c.placement for c in sweep.cells} == {cls.name for cls in load_all().values()}
    assert {c.size for c in sweep.cells} == {"tiny"}  # CPU-sized


# --------------------------------------------------------- the README's "Add a placement", literally

def readme_example():
    """The section "Add a placement" of the README: its text, Python block and YAML block."""
    text = README.read_text()
    section = text[text.index("## Add a placement"):]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    grid = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["grid"]
    return section, code, grid


def test_readme_add_a_placement_example_registers_and_trains_a_sweep_cell(tmp_path):
    from suite.sweep import sweep_from_dict
    from suite.train import train

    section, code, grid = readme_example()
    name = re.search(r'@register\("(\w+)"\)', code).group(1)
    path = tmp_path / f"{name}.py"
    path.write_text(code)  # the file exactly as the README shows it, in a temporary module
    load_all()
    spec = importlib.util.spec_from_file_location(f"readme_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        assert PLACEMENTS[name].equation().startswith("Peri-LN on the MLP only")
        assert f"periln train placement={name}" in section
        # the README's sweep line, in a sweep whose base keeps the run tiny and under tmp_path
        sweep = sweep_from_dict({
            "name": "readme", "grid": grid,
            "base": {"out_dir": str(tmp_path / "runs"), "lr": 3e-3,
                     "data": {"cache_dir": str(tmp_path / "cache"), "synthetic_docs": 3000},
                     "train": {"max_steps": 30, "val_every": 30, "seq_len": 64, "batch_size": 8,
                               "progress_bar": False}},
        }, "README example")
        assert name in sweep.axes["placement"] and len(sweep.cells) == 3
        cell = next(c for c in sweep.cells if c.placement == name)
        result = train(cell)  # what a sweep job runs for the cell (suite.launch.TrainJob)
        assert result["status"] == "finished" and result["step"] == 30
        assert json.loads((cell.run_dir / "result.json").read_text())["status"] == "finished"
        assert result["train_loss"] < 4.0  # from ~5.55 (ln 257): it trains
    finally:
        PLACEMENTS.pop(name, None)  # leave the registry as the other tests expect it
        sys.modules.pop(spec.name, None)


def test_readme_zero_init_gate_example_passes_the_generic_checks(tmp_path):
    section, _, _ = readme_example()
    code = re.findall(r"```python\n(.*?)```", section, re.S)[1]  # the second example
    name = re.search(r'@register\("(\w+)"\)', code).group(1)
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(f"readme_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        cls = PLACEMENTS[name]
        assert cls.zero_init_gate and cls.equation().startswith("ReZero + final norm")
        m = tiny(name)
        assert not isinstance(m.final_norm, torch.nn.Identity)
        assert_every_parameter_learns(m, name)
        # undeclared, the same arm fails the check, and the message says what to declare
        cls.zero_init_gate = False
        with pytest.raises(AssertionError, match="declare zero_init_gate = True"):
            assert_every_parameter_learns(tiny(name), name)
    finally:
        PLACEMENTS.pop(name, None)
        sys.modules.pop(spec.name, None)

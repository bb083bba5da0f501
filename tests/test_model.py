"""Model properties: causality, RoPE, GQA, sizes, tied embeddings, vocabulary padding."""

import pytest
import torch

from models import SIZES, ModelConfig, build_model
from models.layers import Rotary
from models.sizes import NOMINAL


def tiny(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
    return build_model(ModelConfig(**{**base, **kw}))


@pytest.mark.parametrize("placement", ["pre_ln", "post_ln", "peri_ln"])
def test_causal(placement):
    m = tiny(placement=placement)
    x = torch.randint(0, 97, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 97, (2, 8))
    a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_rope_scores_depend_only_on_relative_position():
    rot = Rotary(head_dim=16, max_seq_len=64, theta=10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)

    def score(i, j):
        seq_q = torch.zeros(1, 1, 64, 16)
        seq_q[0, 0, i] = q
        seq_k = torch.zeros(1, 1, 64, 16)
        seq_k[0, 0, j] = k
        return (rot(seq_q)[0, 0, i] @ rot(seq_k)[0, 0, j]).item()

    assert score(10, 3) == pytest.approx(score(40, 33), abs=1e-4)
    assert score(5, 5) == pytest.approx((q @ k).item(), abs=1e-4)  # offset 0: no rotation left
    assert score(10, 3) != pytest.approx(score(10, 4), abs=1e-3)


def test_gqa_shapes():
    m = tiny(n_heads=8, n_kv_heads=2)
    a = m.blocks[0].attn
    assert a.q_proj.weight.shape == (32, 32)
    assert a.k_proj.weight.shape == (8, 32) and a.v_proj.weight.shape == (8, 32)  # 2 heads x 4
    assert m(torch.randint(0, 97, (2, 5))).shape == (2, 5, 97)


def test_hidden_states_shape():
    m = tiny(n_layers=3)
    logits, hidden = m(torch.randint(0, 97, (2, 6)), return_hidden=True)
    assert logits.shape == (2, 6, 97)
    assert len(hidden) == 4 and all(h.shape == (2, 6, 32) for h in hidden)


def test_tied_embeddings_share_storage():
    m = tiny(tie_embeddings=True)
    assert m.lm_head.weight is m.embed.weight


def test_vocab_padding_keeps_real_token_logits():
    a = tiny(vocab_size=100)
    b = tiny(vocab_size=100, pad_vocab_to=128)
    with torch.no_grad():  # same weights on the real rows
        for name in ("embed", "lm_head"):
            getattr(b, name).weight[:100] = getattr(a, name).weight
        for pa, pb in zip(a.blocks.parameters(), b.blocks.parameters()):
            pb.copy_(pa)
    assert b.embed.weight.shape[0] == 128
    x = torch.randint(0, 100, (2, 7))
    out = b(x)
    assert out.shape == (2, 7, 100)
    torch.testing.assert_close(out, a(x))


@pytest.mark.parametrize("name", ["400m", "1.5b", "3.2b", "mini"])
def test_size_parameter_counts_within_5_percent(name):
    dims = SIZES[name]
    d, L, f = dims["d_model"], dims["n_layers"], dims["d_ff"]
    # written out: q, k, v, o (d x d each, no GQA, no bias) + SwiGLU (3 x d x f) + 2 norm gains
    per_block = 4 * d * d + 3 * d * f + 2 * d
    expected = L * per_block + d  # + final norm
    with torch.device("meta"):
        m = build_model(ModelConfig(vocab_size=1000, **dims))
    assert m.num_params(non_embedding=True) == expected
    assert abs(expected / NOMINAL[name] - 1) < 0.05


def test_bad_model_config_is_one_clear_line():
    with pytest.raises(ValueError, match="divisible by n_heads") as err:
        ModelConfig(d_model=30, n_heads=4)
    assert "\n" not in str(err.value)


def test_qk_norm_is_one_bool_from_the_run_config_to_the_attention():
    from suite.config import load_run_config

    cfg = load_run_config(None, ["model.qk_norm=true"]).model_config(vocab_size=97)
    assert cfg.qk_norm is True  # the run config's accepted values (true/false) are unchanged
    m = tiny(qk_norm=cfg.qk_norm)
    for b in m.blocks:
        assert b.attn.qk_norm is True
        assert b.attn.q_norm.weight.shape == b.attn.k_norm.weight.shape == (32 // 4,)  # per head
    assert all(b.attn.qk_norm is False and isinstance(b.attn.q_norm, torch.nn.Identity)
               for b in tiny().blocks)
    with pytest.raises(ValueError, match="qk_norm must be true or false, got 'head'"):
        ModelConfig(qk_norm="head")

"""The Transformer's parts against the paper's formulas (Vaswani et al. 2017, sections 3.2-3.5)."""

import math

import pytest
import torch

from fedloom.data.text import VOCAB_SIZE as V
from fedloom.models import build_model, vmap_unsafe_reason
from fedloom.models.transformer import (
    CausalTransformer,
    MultiHeadAttention,
    causal_mask,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)


def test_attention_matches_plain_softmax_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g, dtype=torch.float64) for _ in range(3))
    ref = torch.zeros(2, 3, 7, 16, dtype=torch.float64)
    for b in range(2):  # loops over the definition softmax_j(q_i . k_j / sqrt(d)) v_j
        for h in range(3):
            for i in range(7):
                s = torch.tensor([float(q[b, h, i] @ k[b, h, j]) / math.sqrt(16) for j in range(7)], dtype=torch.float64)
                a = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
                ref[b, h, i] = sum(a[j] * v[b, h, j] for j in range(7))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), ref, rtol=1e-10, atol=1e-12)
    # masked: row i only mixes values j <= i (the plain reference renormalised over the prefix)
    out = scaled_dot_product_attention(q, k, v, causal_mask(7))
    s = q @ k.transpose(-2, -1) / 4.0
    for i in range(7):
        a = torch.softmax(s[..., i, : i + 1], -1)
        torch.testing.assert_close(out[..., i, :], (a.unsqueeze(-1) * v[..., : i + 1, :]).sum(-2))
    # agrees with PyTorch's fused kernel too
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_multi_head_is_concat_of_heads_times_w_o():
    torch.manual_seed(0)
    mha = MultiHeadAttention(12, 3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    heads = []
    for i in range(3):
        sl = slice(4 * i, 4 * i + 4)
        q, k, v = (x @ lin.weight[sl].T + lin.bias[sl] for lin in (mha.w_q, mha.w_k, mha.w_v))  # W_i: row blocks
        heads.append(scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(mha(x), mha.w_o(torch.cat(heads, -1)))


def test_positional_encoding_matches_formula():
    pe = sinusoidal_encoding(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            assert pe[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
            assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_causal_output_at_t_ignores_later_inputs(pre_ln):
    torch.manual_seed(0)
    m = CausalTransformer(30, 30, d_model=32, heads=4, layers=2, d_ff=64, pre_ln=pre_ln, per_position=True)
    x = torch.randint(0, 30, (3, 20))
    t = 11
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randint(0, 30, (3, 20 - t - 1))
    a, b = m(x), m(x2)  # [B, V, T]
    torch.testing.assert_close(a[..., : t + 1], b[..., : t + 1])
    assert not torch.allclose(a[..., t + 1 :], b[..., t + 1 :])
    # and the last-position head is the per-position output's last column
    m.per_position = False
    torch.testing.assert_close(m(x), a[..., -1])


def test_tied_embeddings_scaled_by_sqrt_d_model():
    torch.manual_seed(0)
    m = build_model("transformer", {"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32}, (10,), V)
    assert m.head is None and "embed.weight" in dict(m.named_parameters())
    assert not any("head" in n for n, _ in m.named_parameters())  # one shared matrix, no separate output layer
    x = torch.randint(0, V, (2, 10))
    h = m.features(x)[:, -1]
    torch.testing.assert_close(m(x), h @ m.embed.weight.T)
    m.layers = torch.nn.ModuleList()  # with no layers, features = sqrt(d) E[x] + PE
    torch.testing.assert_close(m.features(x), m.embed.weight[x] * 4.0 + sinusoidal_encoding(10, 16))
    # a classifier (3 genres) reads the last position through its own head
    c = build_model("transformer", {"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32}, (10,), 3)
    assert c(x).shape == (2, 3) and c.head is not None


def test_dropout_models_fall_back_to_sequential():
    assert vmap_unsafe_reason(build_model("transformer", {"d_model": 16, "heads": 2}, (8,), V)) is None
    why = vmap_unsafe_reason(build_model("transformer", {"d_model": 16, "heads": 2, "dropout": 0.1}, (8,), V))
    assert why is not None and "Dropout" in why


def test_lstm_is_leaf_shakespeare_model():
    m = build_model("lstm", {}, (80,), V)
    assert m.embed.weight.shape == (V, 8)
    assert m.lstm.hidden_size == 256 and m.lstm.num_layers == 2
    assert m(torch.randint(0, V, (2, 80))).shape == (2, V)


def test_noam_schedule_matches_formula_and_peaks_at_warmup():
    from fedloom.models.transformer import noam_lr

    for step in (1, 10, 3999, 4000, 4001, 100_000):
        assert noam_lr(step, 512) == pytest.approx(512 ** -0.5 * min(step ** -0.5, step * 4000 ** -1.5))
    lrs = [noam_lr(s, 128, 100) for s in range(1, 400)]
    assert max(range(len(lrs)), key=lrs.__getitem__) + 1 == 100

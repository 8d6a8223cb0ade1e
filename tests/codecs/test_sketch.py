"""Sketched-update codecs: rotation, subsampling, b-bit quantization and bit packing (Konecny et al. 2016, Sec. 3)."""

import math

import pytest
import torch

from fedloom.codecs import LayerSpec, build_codec, fwht, pack_bits, unpack_bits


def _spec(n):
    return LayerSpec("w", (n,))


def _mean_of_encodings(codec, x, trials):
    st = codec.init(_spec(x.numel()), x.numel())
    acc = torch.zeros_like(x, dtype=torch.float64)
    for seed in range(trials):
        out, _ = codec.encode(x, st, seed)
        acc += codec.decode(out, st, seed).double()
    return acc / trials


def test_fwht_is_orthogonal_and_self_inverse():
    n = 64
    H = fwht(torch.eye(n, dtype=torch.float64))
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(H, H.T)
    assert torch.allclose(H.abs(), torch.full((n, n), n ** -0.5, dtype=torch.float64))  # a Hadamard matrix
    x = torch.randn(5, n, dtype=torch.float64)
    assert torch.allclose(fwht(fwht(x)), x, atol=1e-12)
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(12))


@pytest.mark.parametrize("padding", ["blocks", "full"])
@pytest.mark.parametrize("n", [1, 7, 256, 1000, 5000])
def test_hadamard_rotation_is_orthogonal_and_inverted(padding, n):
    c = build_codec("hadamard", {"padding": padding, "min_block": 64})
    st = c.init(_spec(n), n)
    m = sum(st.blocks)
    assert all(b & (b - 1) == 0 for b in st.blocks) and m >= n
    if padding == "full":
        assert m == 1 << (n - 1).bit_length()
    else:
        assert m - n < 64
    x = torch.randn(n)
    y, _ = c.encode(x, st, seed=3)
    assert y.shape == (m,)
    assert torch.allclose(y.norm(), x.norm(), rtol=1e-5)  # H*D is orthogonal: norms are kept
    assert torch.allclose(c.decode(y, st, seed=3), x, atol=1e-5)
    assert not torch.allclose(c.decode(y, st, seed=4), x, atol=1e-3) or n == 1  # the signs come from the seed


def test_rotation_spreads_a_spike():
    c = build_codec("hadamard", {"padding": "full"})
    x = torch.zeros(1024)
    x[5] = 1.0
    y, _ = c.encode(x, c.init(_spec(1024), 1024), seed=0)
    assert torch.allclose(y.abs(), torch.full((1024,), 1 / 32))  # range shrinks from 1 to 2/32


@pytest.mark.parametrize("bits", range(1, 17))
def test_bit_packing_round_trips_for_every_b(bits):
    g = torch.Generator().manual_seed(bits)
    for n in (1, 7, 8, 13, 1001):
        q = torch.randint(0, 1 << bits, (n,), generator=g)
        q[0] = (1 << bits) - 1  # edge values
        if n > 1:
            q[1] = 0
        buf = pack_bits(q, bits)
        assert buf.dtype == torch.uint8 and buf.numel() == math.ceil(n * bits / 8)
        assert torch.equal(unpack_bits(buf, n, bits), q.to(torch.int32))


@pytest.mark.parametrize("bits", [1, 2, 3, 8, 16])
def test_quantize_is_unbiased(bits):
    x = torch.randn(64)
    c = build_codec("quantize", {"bits": bits})
    trials = 400
    step = float(x.max() - x.min()) / ((1 << bits) - 1)
    mean = _mean_of_encodings(c, x, trials)
    # each encoding's error has |e| < step and variance <= step^2/4: the mean's std <= step / (2 sqrt(trials))
    assert (mean - x.double()).abs().max() <= 5 * step / (2 * math.sqrt(trials)) + 1e-6


@pytest.mark.parametrize("bits", [1, 2, 4, 16])
def test_quantize_error_within_one_step_and_wire_size(bits):
    x = torch.randn(1000) * 3
    c = build_codec("quantize", {"bits": bits})
    st = c.init(_spec(1000), 1000)
    out, _ = c.encode(x, st, seed=1)
    assert out.dtype == torch.uint8 and out.numel() == c.out_spec(st)[0] == 8 + math.ceil(1000 * bits / 8)
    y = c.decode(out, st, seed=1)
    step = float(x.max() - x.min()) / ((1 << bits) - 1)
    assert (y - x).abs().max() <= step * (1 + 1e-5)
    assert y.min() >= x.min() - 1e-5 and y.max() <= x.max() + 1e-5
    levels = torch.unique(torch.round((y - x.min()) / step)).numel()
    assert levels <= 1 << bits


def test_quantize_constant_vector_is_exact():
    c = build_codec("quantize", {"bits": 1})
    x = torch.full((10,), 0.25)
    st = c.init(_spec(10), 10)
    assert torch.equal(c.decode(c.encode(x, st, 0)[0], st, 0), x)


def test_subsample_keeps_k_values_from_the_seed_and_is_unbiased():
    x = torch.randn(200)
    c = build_codec("subsample", {"fraction": 0.25})
    st = c.init(_spec(200), 200)
    assert st.k == 50 and c.out_spec(st) == (50, torch.float32)
    out, _ = c.encode(x, st, seed=9)
    y = c.decode(out, st, seed=9)
    kept = y != 0
    assert int(kept.sum()) == 50
    assert torch.allclose(y[kept], x[kept] * 4)  # rescaled by n/k
    mean = _mean_of_encodings(c, x, 2000)
    # Var(entry) = x^2 (n/k - 1) = 3 x^2
    assert ((mean - x.double()).abs() <= 5 * x.double().abs() * math.sqrt(3 / 2000) + 1e-9).all()


def test_subsample_fraction_one_is_identity():
    c = build_codec("subsample", {"fraction": 1.0})
    x = torch.randn(17)
    st = c.init(_spec(17), 17)
    assert torch.equal(c.decode(c.encode(x, st, 0)[0], st, 0), x)


def test_rotation_shrinks_quantization_error_on_skewed_updates():
    """Suresh et al. 2017 / Konecny Fig. 3: with a few large coordinates, HD before 2-bit quantization cuts the MSE."""
    from fedloom.codecs import chain

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=g) * 0.01
    x[:8] = 1.0
    spec = LayerSpec("w", (64, 64))
    errs = {}
    for name, stages in {"I": [], "HD": [build_codec("hadamard")]}.items():
        ch = chain(*stages, build_codec("quantize", {"bits": 2}))
        st = ch.init([spec])
        mse = 0.0
        for key in range(5):
            enc, _ = ch.encode({"w": x}, st, key)
            mse += float(((ch.decode(enc, st, key, {"w": (4096,)})["w"] - x) ** 2).mean())
        errs[name] = mse
    assert errs["HD"] < 0.2 * errs["I"]


@pytest.mark.parametrize("n,k", [(40, 10), (40, 1), (1000, 250), (1000, 900), (10, 10)])
def test_random_subset_is_a_uniform_k_subset(n, k):
    from fedloom.codecs.sketch import random_subset

    counts = torch.zeros(n)
    trials = 400
    for seed in range(trials):
        idx = random_subset(n, k, seed, "t")
        assert idx.numel() == k and torch.unique(idx).numel() == k and 0 <= int(idx.min()) and int(idx.max()) < n
        counts[idx] += 1
    p = k / n
    # every index is kept with probability k/n (binomial std sqrt(trials p (1-p)))
    assert (counts / trials - p).abs().max() <= 5 * math.sqrt(p * (1 - p) / trials) + 1e-9

"""Packing: layout arithmetic, exact pack/unpack round trips, the stated error bound (nearest and stochastic),
unbiasedness of stochastic rounding, clipping counts, and refusal beyond the headroom."""

import numpy as np
import pytest

from fedloom.crypto.packing import Packer, PackingSpec, pack, quantize, unpack
from fedloom.crypto.paillier import CryptoError


def test_layout_2048_ten_clients():
    s = PackingSpec.for_contributors(2048, 10, value_bits=16)
    assert (s.headroom_bits, s.slot_bits, s.slots) == (4, 20, 102)
    assert s.num_plaintexts(100_000) == 981
    assert PackingSpec(2048, capacity=1).headroom_bits == 0
    assert PackingSpec(2048, capacity=16).headroom_bits == 4 and PackingSpec(2048, capacity=17).headroom_bits == 5


def test_bad_specs():
    for kw in ({"value_bits": 0}, {"value_bits": 49}, {"clip": 0.0}, {"clip": float("inf")}, {"capacity": 0},
               {"value_bits": 48, "capacity": 1 << 20}):
        with pytest.raises(CryptoError):
            PackingSpec(1024, **kw)
    with pytest.raises(CryptoError):
        PackingSpec(40, value_bits=40)


@pytest.mark.parametrize("key_bits,q,cap", [(512, 8, 3), (1024, 16, 10), (2048, 13, 1), (2048, 30, 1000)])
def test_pack_unpack_exact(key_bits, q, cap):
    spec = PackingSpec(key_bits, value_bits=q, capacity=cap)
    rng = np.random.default_rng(key_bits + q)
    top = (1 << spec.slot_bits) - 1
    for length in (1, spec.slots - 1, spec.slots, spec.slots + 1, 3 * spec.slots + 7):
        v = rng.integers(0, top, size=length, endpoint=True, dtype=np.uint64)
        v[0] = top
        v[-1] = 0
        ms = pack(v, spec)
        assert len(ms) == spec.num_plaintexts(length)
        assert all(0 <= m < (1 << (key_bits - 1)) for m in ms)
        np.testing.assert_array_equal(unpack(ms, length, spec), v)
    with pytest.raises(CryptoError):
        pack(np.array([top + 1], dtype=np.uint64), spec)


def test_unpack_detects_overflow_and_wrong_count():
    spec = PackingSpec(512, value_bits=8, capacity=4)
    ms = pack(np.ones(10, dtype=np.uint64), spec)
    with pytest.raises(CryptoError, match="capacity"):
        unpack([ms[0] | (1 << (spec.slots * spec.slot_bits))], 10, spec)
    with pytest.raises(CryptoError):
        unpack(ms + ms, 10, spec)


def _sum_plaintexts(packs):
    return [sum(col) for col in zip(*(p.plaintexts for p in packs))]


@pytest.mark.parametrize("stochastic", [False, True])
def test_error_bound_weighted_mean(stochastic):
    spec = PackingSpec(1024, value_bits=10, clip=0.5, capacity=200, stochastic=stochastic)
    packer = Packer(spec)
    rng = np.random.default_rng(7)
    K, length = 6, 500
    xs = [rng.normal(0, 0.3, length) for _ in range(K)]
    for x in xs:  # edge values
        x[:4] = [-0.5, 0.5, 0.0, 1e-12]
    weights = [int(w) for w in rng.integers(1, 30, K)]
    packs = [packer.encode(x, w, rng=rng) for x, w in zip(xs, weights)]
    W = sum(weights)
    mean = packer.decode_sum(_sum_plaintexts(packs), length, W)
    truth = sum(w * np.clip(x, -0.5, 0.5) for x, w in zip(xs, weights)) / W
    err = np.abs(mean - truth).max()
    assert err <= spec.error_bound * (1 + 1e-9)
    assert sum(p.clipped for p in packs) == sum(int((np.abs(x) > 0.5).sum()) for x in xs)
    assert all(p.clipped > 0 for p in packs)


def test_single_value_nearest_error_and_extremes():
    spec = PackingSpec(512, value_bits=12, clip=2.0, capacity=1)
    packer = Packer(spec)
    x = np.concatenate([np.linspace(-2, 2, 1001), [-2.0, 2.0, -7.5, 9.0]])
    out = packer.decode_sum(packer.encode(x).plaintexts, x.size, 1)
    assert np.abs(out - np.clip(x, -2, 2)).max() <= spec.step / 2 * (1 + 1e-9)
    assert out[-4] == pytest.approx(-2.0) and out[-3] == pytest.approx(2.0)


def test_stochastic_rounding_unbiased():
    spec = PackingSpec(512, value_bits=3, clip=1.0, capacity=1, stochastic=True)
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, 64)
    reps = np.stack([quantize(x, spec, rng)[0] for _ in range(2000)]).astype(np.float64)
    est = reps.mean(0) * spec.step - 1.0
    # the std of the mean of 2000 Bernoulli-step roundings is <= step / (2 sqrt(2000)); allow 5 sigma
    assert np.abs(est - x).max() < 5 * spec.step / (2 * np.sqrt(2000))
    with pytest.raises(CryptoError, match="Generator"):
        quantize(x, spec)


def test_refuses_beyond_headroom():
    spec = PackingSpec.for_contributors(512, 4, value_bits=8)
    packer = Packer(spec)
    x = np.full(20, 1.0)  # every level at its maximum: the worst case for carries
    packs = [packer.encode(x) for _ in range(5)]
    np.testing.assert_allclose(packer.decode_sum(_sum_plaintexts(packs[:4]), 20, 4), 1.0)
    with pytest.raises(CryptoError, match="capacity"):
        packer.decode_sum(_sum_plaintexts(packs), 20, 5)
    for bad_w in (0, 5, 2.5):
        with pytest.raises(CryptoError, match="weight"):
            packer.encode(x, bad_w)


def test_nan_refused():
    with pytest.raises(CryptoError, match="NaN"):
        Packer(PackingSpec(512)).encode(np.array([0.0, np.nan]))

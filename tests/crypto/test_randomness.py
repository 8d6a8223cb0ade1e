"""Randomness strategies: every one yields valid ciphertexts that decrypt; the pool never reuses a value;
DJN's fixed-base table equals a plain exponentiation; multi-process encryption matches."""

import random
import secrets

import gmpy2
import pytest

from fedloom.crypto.paillier import CryptoError
from fedloom.crypto.parallel import ParallelEncryptor
from fedloom.crypto.randomness import (
    DJNRandomness,
    FreshRandomness,
    PoolExhausted,
    PrecomputedPool,
    RandomnessSpec,
    build_randomness,
    encrypt_many,
)


def _check_strategy(pk, sk, rnd, k=12):
    ms = [0, int(pk.n) - 1] + [random.Random(3).randrange(int(pk.n)) for _ in range(k - 2)]
    cs = encrypt_many(pk, ms, rnd)
    assert len(set(cs)) == len(cs)
    assert all(pk.is_valid(c) for c in cs)
    assert [sk.decrypt(c) for c in cs] == ms


@pytest.mark.parametrize("name", ["fresh", "pool", "djn"])
def test_strategies_decrypt(keypair512, name):
    pk, sk = keypair512
    _check_strategy(pk, sk, build_randomness(pk, name))


def test_djn_constant_time_method_and_base(keypair512):
    pk, sk = keypair512
    d = DJNRandomness(pk, method="powmod_sec")
    _check_strategy(pk, sk, d)
    assert d.exponent_bits == 256
    # the obfuscator is an n-th residue: it decrypts to 0
    assert all(sk.decrypt(r) == 0 for r in d.obfuscators(5))
    with pytest.raises(CryptoError):
        DJNRandomness(pk, hs=pk.n)  # not a unit


def test_djn_table_equals_powmod(keypair512):
    pk, _ = keypair512
    t = DJNRandomness(pk, method="table", window=5)
    s = DJNRandomness(pk, hs=t.hs, method="powmod_sec")
    for a in [1, 2, 31, 32, 33, 1 << t.exponent_bits] + [secrets.randbits(t.exponent_bits) + 1 for _ in range(10)]:
        assert t.power(a) == s.power(a) == gmpy2.powmod(t.hs, a, pk.n2)
    # a worker rebuilt from the spec uses the same base
    assert build_randomness(pk, t.spec()).hs == t.hs


def test_pool_pops_and_never_reuses(keypair512):
    pk, _sk = keypair512
    pool = PrecomputedPool(pk, 10, on_empty="error")
    assert len(pool) == 10
    first = pool.obfuscators(6)
    assert len(pool) == 4
    second = pool.obfuscators(4)
    assert len(pool) == 0 and not set(map(int, first)) & set(map(int, second))
    with pytest.raises(PoolExhausted):
        pool.obfuscators(1)
    lenient = PrecomputedPool(pk, 2)
    assert len(lenient.obfuscators(5)) == 5 and lenient.computed_on_demand == 3
    with pytest.raises(ValueError):
        PrecomputedPool(pk, on_empty="reuse")
    with pytest.raises(ValueError, match="unknown"):
        build_randomness(pk, "fixed")


def test_strategy_of_another_key_refused(keypair512, keypair1024):
    with pytest.raises(CryptoError):
        encrypt_many(keypair512[0], [1], FreshRandomness(keypair1024[0]))


@pytest.mark.parametrize("spec", ["fresh", RandomnessSpec("djn")])
def test_parallel_encryption_matches(keypair512, spec):
    pk, sk = keypair512
    ms = [random.Random(5).randrange(int(pk.n)) for _ in range(40)]
    with ParallelEncryptor(pk, spec, workers=2) as enc:
        cs = enc.encrypt(ms)
        rs = enc.obfuscators(7)
    assert [sk.decrypt(c) for c in cs] == ms
    assert len(rs) == 7 and all(sk.decrypt(r) == 0 for r in rs)
    # pool filled by the workers
    pool = PrecomputedPool(pk)
    pool.fill(0, rs)
    assert len(pool) == 7

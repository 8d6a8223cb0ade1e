"""Paillier core: key generation checks, round trips on random and edge plaintexts, homomorphic properties,
fixed-size serialization, ciphertext validation."""

import random
import secrets

import gmpy2
import pytest
from gmpy2 import mpz

from fedloom.crypto.paillier import CryptoError, InvalidCiphertext, PrivateKey, PublicKey, check_key, generate_keypair


def _edge_and_random(pk, k=20, seed=0):
    rnd = random.Random(seed)
    n = int(pk.n)
    return [0, 1, 2, n // 2, n - 2, n - 1] + [rnd.randrange(n) for _ in range(k)]


@pytest.mark.parametrize("bits", [2048, 3072])
def test_keygen_real_sizes(bits):
    pk, sk = generate_keypair(bits)
    assert pk.n_bits == bits and pk.n == sk.p * sk.q
    assert sk.p != sk.q and sk.p.bit_length() == sk.q.bit_length() == bits // 2
    assert gmpy2.is_prime(sk.p) and gmpy2.is_prime(sk.q)
    assert pk.ciphertext_bytes == 2 * bits // 8
    m = secrets.randbelow(int(pk.n))
    assert sk.decrypt(pk.encrypt(m)) == m


def test_keygen_rejects_bad_sizes():
    with pytest.raises(CryptoError):
        generate_keypair(256)
    with pytest.raises(CryptoError):
        generate_keypair(1025)


def test_check_key_rejects_weak_primes(keypair512):
    _, sk = keypair512
    p, q = int(sk.p), int(sk.q)
    with pytest.raises(CryptoError, match="p == q"):
        check_key(p, p)
    with pytest.raises(CryptoError, match="unequal length"):
        check_key(p, int(gmpy2.next_prime(q << 8)))
    with pytest.raises(CryptoError, match="too small"):
        check_key(p, int(gmpy2.next_prime(p + 2)))
    with pytest.raises(CryptoError, match="not prime"):
        check_key(p, q + 2 if not gmpy2.is_prime(q + 2) else q + 4)
    with pytest.raises(CryptoError, match="bits"):
        check_key(p, q, 1024)
    check_key(p, q, 512)
    with pytest.raises(CryptoError):
        PrivateKey.from_primes(p, p)


def test_round_trip_random_and_edge_values(keypair512, keypair1024):
    for pk, sk in (keypair512, keypair1024):
        for m in _edge_and_random(pk):
            c = pk.encrypt(m)
            assert pk.is_valid(c)
            assert sk.decrypt(c) == m


def test_encryption_is_randomized(keypair512):
    pk, _sk = keypair512
    assert pk.encrypt(5) != pk.encrypt(5)


def test_plaintext_out_of_range(keypair512):
    pk, _ = keypair512
    for bad in (-1, pk.n, pk.n + 5):
        with pytest.raises(CryptoError):
            pk.encrypt(bad)


def test_crt_decryption_equals_textbook(keypair512):
    pk, sk = keypair512
    lam = gmpy2.lcm(sk.p - 1, sk.q - 1)
    n, n2 = pk.n, pk.n2
    mu = gmpy2.invert((gmpy2.powmod(n + 1, lam, n2) - 1) // n, n)
    for m in _edge_and_random(pk, 10, seed=1):
        c = pk.encrypt(m)
        assert sk.decrypt(c) == ((gmpy2.powmod(c, lam, n2) - 1) // n) * mu % n == m


def test_g_is_n_plus_one(keypair512):
    pk, _sk = keypair512
    m = 123456789
    assert pk.raw_encrypt(m, 1) == gmpy2.powmod(pk.n + 1, m, pk.n2)


def test_homomorphic_properties(keypair1024):
    pk, sk = keypair1024
    rnd = random.Random(2)
    n = int(pk.n)
    for _ in range(10):
        a, b, k = rnd.randrange(n), rnd.randrange(n), rnd.randrange(-n, n)
        ca, cb = pk.encrypt(a), pk.encrypt(b)
        assert sk.decrypt(pk.add(ca, cb)) == (a + b) % n
        assert sk.decrypt(pk.add_plain(ca, b)) == (a + b) % n
        assert sk.decrypt(pk.mul_scalar(ca, k)) == (a * k) % n
        assert sk.decrypt(pk.mul_scalar(ca, -1)) == (-a) % n
        assert sk.decrypt(pk.rerandomize(ca)) == a
    ms = [rnd.randrange(1000) for _ in range(20)]
    assert sk.decrypt(pk.sum(pk.encrypt(m) for m in ms)) == sum(ms)
    assert sk.decrypt(pk.add(pk.encrypt(n - 1), pk.encrypt(2))) == 1  # wraps mod n


def test_serialization_fixed_size(keypair512, keypair1024):
    for pk, sk in (keypair512, keypair1024):
        ms = _edge_and_random(pk, 10)
        cs = [pk.encrypt(m) for m in ms] + [mpz(1)]  # 1 = Enc(0; r = 1): the shortest possible ciphertext
        blob = pk.serialize(cs)
        assert len(blob) == len(cs) * 2 * pk.n_bits // 8
        back = pk.deserialize(blob, len(cs))
        assert back == cs
        assert [sk.decrypt(c) for c in back[:-1]] == ms
    assert PublicKey.from_bytes(pk.to_bytes()) == pk


def test_invalid_ciphertexts_rejected(keypair512):
    pk, sk = keypair512
    L = pk.ciphertext_bytes
    for bad in (0, pk.n2, pk.n2 + 1, sk.p * 7, pk.n):
        assert not pk.is_valid(bad)
        with pytest.raises(InvalidCiphertext):
            sk.decrypt(bad)
    good = pk.serialize([pk.encrypt(1)])
    with pytest.raises(InvalidCiphertext, match="multiple"):
        pk.deserialize(good[:-1])
    with pytest.raises(InvalidCiphertext, match="expected 2"):
        pk.deserialize(good, 2)
    with pytest.raises(InvalidCiphertext, match="#1"):
        pk.deserialize(good + bytes(L))  # all-zero block
    with pytest.raises(InvalidCiphertext):
        pk.deserialize(good + b"\xff" * L)  # >= n^2


def test_fingerprint_and_repr(keypair512, keypair1024):
    (pk1, sk1), (pk2, _) = keypair512, keypair1024
    assert pk1.fingerprint != pk2.fingerprint and len(pk1.fingerprint) == 32
    assert PublicKey(pk1.n).fingerprint == pk1.fingerprint
    assert str(int(sk1.p)) not in repr(sk1) and str(int(sk1.q)) not in repr(sk1)

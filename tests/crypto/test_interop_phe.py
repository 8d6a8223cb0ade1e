"""Unpacked fedloom ciphertexts are standard Paillier: python-paillier (phe) decrypts them with the same key,
and fedloom decrypts phe's."""

import random

import pytest

from fedloom.crypto.paillier import PrivateKey, PublicKey
from fedloom.crypto.randomness import DJNRandomness, encrypt_many

phe = pytest.importorskip("phe")


def test_fedloom_to_phe_and_back(keypair1024):
    pk, sk = keypair1024
    ppub = phe.PaillierPublicKey(int(pk.n))
    ppriv = phe.PaillierPrivateKey(ppub, int(sk.p), int(sk.q))
    rnd = random.Random(9)
    ms = [0, 1, int(pk.n) - 1] + [rnd.randrange(int(pk.n)) for _ in range(10)]
    for c, m in zip([pk.encrypt(m) for m in ms] + encrypt_many(pk, ms, DJNRandomness(pk)), ms + ms):
        assert ppriv.raw_decrypt(int(c)) == m
    small = [0, 7, 123456, ppub.max_int]
    for m in small:  # through phe's EncodedNumber layer (integers encode with exponent 0)
        assert ppriv.decrypt(phe.EncryptedNumber(ppub, int(pk.encrypt(m)), 0)) == m
    # homomorphic sum computed by fedloom, decrypted by phe
    assert ppriv.raw_decrypt(int(pk.sum(pk.encrypt(m) for m in small[:3]))) == sum(small[:3])


def test_phe_to_fedloom():
    ppub, ppriv = phe.generate_paillier_keypair(n_length=1024)
    sk = PrivateKey.from_primes(ppriv.p, ppriv.q)
    assert sk.public_key == PublicKey(ppub.n)
    rnd = random.Random(10)
    for m in [0, 1, 42, ppub.max_int] + [rnd.randrange(ppub.max_int) for _ in range(10)]:
        enc = ppub.encrypt(m)
        assert enc.exponent == 0
        c = enc.ciphertext(be_secure=True)
        assert sk.decrypt(c) == m
        assert sk.decrypt(ppub.raw_encrypt(m)) == m
    assert sk.decrypt((ppub.encrypt(5) + ppub.encrypt(-2)).ciphertext()) == 3

"""Protocol roles: sums with dropouts, the aggregator holds no secret key, bad messages are rejected with the
client named while the aggregation continues."""

import json
import struct

import numpy as np
import pytest
from gmpy2 import mpz

from fedloom.crypto.packing import PackingSpec
from fedloom.crypto.paillier import CryptoError, PrivateKey
from fedloom.crypto.protocol import Aggregator, BadMessage, Client, EncryptedSum, KeyAuthority
from tests.crypto.conftest import reachable


@pytest.fixture(scope="module")
def setup(keypair512):
    pk, sk = keypair512
    ka = KeyAuthority(private_key=sk, min_contributors=2)
    spec = PackingSpec.for_contributors(pk.n_bits, 8, value_bits=12, clip=1.0)
    rng = np.random.default_rng(0)
    length = 300
    xs = {k: rng.normal(0, 0.4, length) for k in range(6)}
    msgs = {k: Client(k, ka.public_key, spec).encrypt(x, meta={"num_samples": 10 + k}) for k, x in xs.items()}
    return ka, spec, length, xs, msgs


def _truth(xs, spec, keys, weights=None):
    w = weights or {k: 1 for k in keys}
    W = sum(w[k] for k in keys)
    return sum(w[k] * np.clip(xs[k], -spec.clip, spec.clip) for k in keys) / W


def test_sum_with_dropouts(setup):
    ka, spec, length, xs, msgs = setup
    agg = Aggregator(ka.public_key, spec, length)
    present = [0, 2, 3, 5]  # clients 1 and 4 dropped out
    s, rejected = agg.aggregate({k: msgs[k] for k in present})
    assert rejected == [] and s.contributors == present and s.total_weight == 4
    assert agg.metas[3] == {"num_samples": 13}
    res = ka.decrypt_sum(s.to_bytes(ka.public_key), spec)  # as it travels to the key authority
    assert res.count == 4 and res.total_weight == 4
    assert np.abs(res.mean - _truth(xs, spec, present)).max() <= spec.error_bound * (1 + 1e-9)
    assert len(msgs[0]) < 8 + 400 + spec.num_plaintexts(length) * ka.public_key.ciphertext_bytes


def test_weighted_sum(setup, keypair512):
    ka, spec, length, xs, _ = setup
    weights = {0: 3, 1: 1, 2: 4}
    agg = Aggregator(ka.public_key, spec, length)
    for k, w in weights.items():
        agg.receive(k, Client(k, ka.public_key, spec, "djn").encrypt(xs[k], w))
    res = ka.decrypt_sum(agg.result(), spec)
    assert res.total_weight == 8
    assert np.abs(res.mean - _truth(xs, spec, list(weights), weights)).max() <= spec.error_bound * (1 + 1e-9)
    # headroom: a further weight-1 message would exceed capacity 8 -> refused, naming the client
    with pytest.raises(BadMessage, match="client 3: .*capacity"):
        agg.receive(3, Client(3, ka.public_key, spec).encrypt(xs[3]))


def test_key_authority_minimum_and_key_checks(setup, keypair1024):
    ka, spec, length, _xs, msgs = setup
    agg = Aggregator(ka.public_key, spec, length)
    agg.receive(0, msgs[0])
    with pytest.raises(CryptoError, match="min_contributors"):
        ka.decrypt_sum(agg.result(), spec)
    other = KeyAuthority(private_key=keypair1024[1])
    with pytest.raises(CryptoError, match="different public key"):
        other.decrypt_sum(agg.result(), PackingSpec.for_contributors(1024, 8))
    # decrypt_sum is the key authority's only decryption entry point
    assert [m for m in dir(ka) if "decrypt" in m] == ["decrypt_sum"]


def test_aggregator_holds_no_secret(setup):
    ka, spec, length, _xs, msgs = setup
    sk = ka._sk
    agg = Aggregator(ka.public_key, spec, length)
    agg.aggregate(msgs)
    objs = reachable(agg)
    ids = {id(o) for o in objs}  # the walk did go through the public key and the ciphertext accumulator
    assert id(agg.public_key) in ids and all(id(c) in ids for c in agg._acc)
    secrets_ = {int(sk.p), int(sk.q), int(sk.p - 1), int(sk.q - 1), int((sk.p - 1) * (sk.q - 1))}
    for o in objs:
        assert not isinstance(o, (PrivateKey, KeyAuthority))
        if isinstance(o, (int, type(mpz(0)))) and not isinstance(o, bool):
            assert int(o) not in secrets_
    assert not any("decrypt" in m for m in dir(agg))
    # sanity: the same walk from the key authority does find the private key
    assert any(isinstance(o, PrivateKey) for o in reachable(ka))


def _reframe(msg, **changes):
    (hlen,) = struct.unpack("<I", msg[4:8])
    header = json.loads(msg[8 : 8 + hlen])
    blob = msg[8 + hlen :]
    blob = changes.pop("blob", blob)
    header.update(changes)
    h = json.dumps(header).encode()
    return msg[:4] + struct.pack("<I", len(h)) + h + blob


def test_bad_messages_rejected_rest_aggregated(setup, keypair1024):
    ka, spec, length, xs, msgs = setup
    pk = ka.public_key
    L = pk.ciphertext_bytes
    (hlen,) = struct.unpack("<I", msgs[1][4:8])
    blob = msgs[1][8 + hlen :]
    other_pk = keypair1024[0]
    other_spec = PackingSpec.for_contributors(1024, 8, value_bits=12, clip=1.0)
    bad = {
        1: _reframe(msgs[1], blob=bytes(L) + blob[L:]),  # ciphertext 0 outside Z*_{n^2}
        2: _reframe(msgs[2], blob=blob[:-1]),  # wrong length
        3: Client(3, other_pk, other_spec).encrypt(xs[3]),  # another key
        4: b"FLPC\x05\x00\x00\x00{oops",  # malformed bytes
        6: _reframe(msgs[1], client=6, blob=blob[:L] + (int(pk.n) * 3).to_bytes(L, "big") + blob[2 * L :]),  # not a unit
        7: msgs[5],  # claims to be client 5
        8: _reframe(msgs[0], client=8, spec={**spec.to_dict(), "clip": 2.0}),
        9: _reframe(msgs[0], client=9, count=1),
        10: "not bytes",
    }
    reasons = {1: "#0", 2: "multiple", 3: "another public key", 4: "malformed", 6: "#1", 7: "client 5",
               8: "packing spec", 9: "ciphertexts declared", 10: "bytes"}
    sequence = [(0, msgs[0])] + list(bad.items()) + [(5, msgs[5]), (0, msgs[0])]  # 0 again: duplicate
    agg = Aggregator(pk, spec, length)
    s, rejected = agg.aggregate(sequence)
    assert [r["client"] for r in rejected] == [1, 2, 3, 4, 6, 7, 8, 9, 10, 0]
    for r in rejected[:-1]:
        assert reasons[r["client"]] in r["reason"], r
    assert "second message" in rejected[-1]["reason"]
    with pytest.raises(BadMessage, match=r"^client 4: "):
        Aggregator(pk, spec, length).receive(4, bad[4])
    assert s.contributors == [0, 5]
    res = ka.decrypt_sum(s, spec)
    assert np.abs(res.mean - _truth(xs, spec, [0, 5])).max() <= spec.error_bound * (1 + 1e-9)


def test_client_spec_must_match_key(keypair512):
    pk, _ = keypair512
    with pytest.raises(CryptoError):
        Client(0, pk, PackingSpec(1024))


def test_encrypted_sum_bytes_round_trip(setup):
    ka, spec, length, _xs, msgs = setup
    s, _ = Aggregator(ka.public_key, spec, length).aggregate(msgs)
    back = EncryptedSum.from_bytes(s.to_bytes(ka.public_key), ka.public_key)
    assert back == s


def test_parallel_decryption_matches(setup):
    ka, spec, length, _xs, msgs = setup
    s, _ = Aggregator(ka.public_key, spec, length).aggregate(msgs)
    par = KeyAuthority(private_key=ka._sk, workers=2, min_contributors=2)
    np.testing.assert_array_equal(par.decrypt_sum(s, spec).mean, ka.decrypt_sum(s, spec).mean)
    s.ciphertexts[1] = mpz(0)
    with pytest.raises(CryptoError, match="#1"):
        ka.decrypt_sum(s, spec)

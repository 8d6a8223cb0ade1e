"""End to end: FedAvg through fedloom's round loop with Paillier secure aggregation matches the plaintext run
(digits, tiny scale, 1024-bit key so it is fast); bytes_up counts the ciphertexts; bad messages are rejected
by client while the round goes on."""

import types

import pytest
from pydantic import ValidationError

from fedloom.algorithms.base import Algorithm, AlgorithmParams
from fedloom.config import validate_config
from fedloom.crypto.protocol import KeyAuthority
from fedloom.crypto.secagg import SecureAggregationConfig, build_secure_aggregation
from fedloom.simulation import Simulation

ROUNDS = 8


def _cfg(**ov):
    raw = {"seed": 1, "rounds": ROUNDS, "cohort_size": 5, "progress": False, "engine": "sequential", "threads": 1,
           "data": {"dataset": "digits", "partition": "iid", "num_clients": 10},
           "model": {"name": "mlp", "hidden": [32]}, "algorithm": "fedavg",
           "client": {"lr": 0.1, "epochs": 1, "batch_size": 16}}
    raw.update(ov)
    return validate_config(raw)


SEC = {"key_bits": 1024, "value_bits": 16, "clip": 1.0}


@pytest.fixture(scope="module")
def runs():
    plain = Simulation(_cfg()).run()
    sim = Simulation(_cfg(), secure_aggregation=SEC)
    secure = sim.run()
    return plain, secure, sim


def test_secure_fedavg_matches_plaintext(runs):
    plain, secure, _sim = runs
    assert len(plain) == len(secure) == ROUNDS
    for p, s in zip(plain, secure):
        assert s["reported"] == p["reported"] == 5 and s["rejected"] == []
        assert abs(s["test_accuracy"] - p["test_accuracy"]) <= 0.005
    assert secure[-1]["test_accuracy"] > 0.8  # it did learn
    assert all(s["secagg_clipped"] == 0 for s in secure)


def test_bytes_up_counts_ciphertexts(runs):
    _plain, secure, sim = runs
    per_client = sim.secagg.spec.num_plaintexts(sim.secagg.length) * sim.secagg.public_key.ciphertext_bytes
    for s in secure:
        assert 5 * per_client < s["bytes_up"] < 5 * (per_client + 1024)  # ciphertexts + a small JSON header
        assert s["secagg_bytes_to_authority"] > per_client


def test_bad_message_rejected_round_continues():
    sim = Simulation(_cfg(rounds=1), secure_aggregation=SEC)
    enc = sim.secagg.encode
    seen: list[int] = []
    other = KeyAuthority(1024).public_key

    def tampered(rnd, client, out):
        seen.append(client)
        msg = enc(rnd, client, out)
        if len(seen) == 3:  # the third client's message under another key's fingerprint
            return msg.replace(sim.secagg.public_key.fingerprint.encode(), other.fingerprint.encode())
        return msg

    sim.secagg.encode = tampered
    rec = sim.round(1)
    assert rec["reported"] == 4
    assert len(seen) == 5 and [r["client"] for r in rec["rejected"]] == [seen[2]]
    assert "another public key" in rec["rejected"][0]["reason"]
    assert rec["test_accuracy"] is not None


def test_only_weighted_mean_algorithms():
    class Median(Algorithm):
        def aggregate(self, updates, weights):
            return updates[0]

    fake = types.SimpleNamespace(algorithm=Median(AlgorithmParams()), cfg=_cfg())
    with pytest.raises(ValueError, match="overrides aggregate"):
        build_secure_aggregation(fake, SecureAggregationConfig(key_bits=512))
    assert build_secure_aggregation(fake, {"enabled": False}) is None
    with pytest.raises(ValidationError):
        SecureAggregationConfig(randomness="nope")

"""End to end: FedAvg through fedloom's round loop with Paillier secure aggregation matches the plaintext run
(digits, tiny scale, 1024-bit key so it is fast); bytes_up counts the ciphertexts; bad messages are rejected
by client while the round goes on."""

import pytest
import torch
from pydantic import ValidationError

from fedloom.config import validate_config
from fedloom.crypto.protocol import KeyAuthority
from fedloom.crypto.secagg import SecureAggregationConfig, build_secure_aggregation
from fedloom.simulation import Simulation
from tests.conftest import small_config, tap

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
    per_client = sim.built.secagg.spec.num_plaintexts(sim.built.secagg.length) * sim.built.secagg.public_key.ciphertext_bytes
    for s in secure:
        assert 5 * per_client < s["bytes_up"] < 5 * (per_client + 1024)  # ciphertexts + a small JSON header
        assert s["secagg_bytes_to_authority"] > per_client


def test_bad_message_rejected_round_continues():
    sim = Simulation(_cfg(rounds=1), secure_aggregation=SEC)
    seen: list[int] = []
    other = KeyAuthority(1024).public_key

    def tampered(rnd, client, msg):
        seen.append(client)
        if len(seen) == 3:  # the third client's message under another key's fingerprint
            return msg.replace(sim.built.secagg.public_key.fingerprint.encode(), other.fingerprint.encode())
        return msg

    tap(sim, tampered)
    rec = sim.round(1)
    assert rec["reported"] == 4
    assert len(seen) == 5 and [r["client"] for r in rec["rejected"]] == [seen[2]]
    assert "another public key" in rec["rejected"][0]["reason"]
    assert rec["test_accuracy"] is not None


def test_only_weighted_mean_algorithms():
    from fedloom.config import ConfigError

    for alg in ("fed2", "matched_avg", "heterofl", "fednova", "fd"):
        with pytest.raises(ConfigError, match=f"secure_aggregation / algorithm.name: algorithm '{alg}' aggregates its own"):
            validate_config(small_config(algorithm=alg, secure_aggregation={"key_bits": 1024}))
    with pytest.raises(ConfigError, match="secure_aggregation / algorithm.name"):  # also for runs built from Python
        Simulation(validate_config(small_config(algorithm="fednova")), secure_aggregation={"key_bits": 1024})
    sizes = torch.tensor([3, 9, 5])
    assert build_secure_aggregation({"enabled": False}, {}, sizes, 2, "samples", 0) is None
    with pytest.raises(ValidationError):
        SecureAggregationConfig(randomness="nope")

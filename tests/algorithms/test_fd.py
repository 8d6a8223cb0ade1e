"""FD in the round loop: per-device (heterogeneous) models, teachers from the real uploads, gamma = 0 is plain
CE training, bytes on the wire are L x L float32 per device per direction, FAug from the config, bad params."""

from __future__ import annotations

import json

import pytest
import torch

from fedloom import wire
from fedloom.algorithms.fd import LOGITS, TEACHER, teachers
from fedloom.algorithms.fedavg import FedAvg
from fedloom.config import ConfigError, validate_config
from fedloom.core.algorithm import AlgorithmParams
from fedloom.engine.base import CohortJob
from fedloom.engine.sequential import local_sgd
from fedloom.simulation import Simulation
from tests.conftest import tap

torch.set_num_threads(1)
M, L = 3, 10


def _cfg(rounds=2, gamma=1.0, models=None, **extra):
    alg = {"name": "fd", "gamma": gamma}
    if models is not None:
        alg["models"] = models
    return validate_config({
        "name": "fd", "seed": 0, "rounds": rounds, "cohort_size": M, "progress": False, "engine": "sequential",
        "checkpoint_every": 0, "threads": 1,
        "data": {"dataset": "digits", "partition": {"name": "target_labels", "samples_per_client": 400,
                                                     "target_labels": 2, "keep_per_target": 3}, "num_clients": M},
        "model": {"name": "mlp", "hidden": [16]}, "algorithm": alg,
        "client": {"lr": 0.1, "batch_size": 16, "local_steps": 15}, **extra})


def _record_uploads(sim: Simulation) -> list[list[bytes]]:
    sent: list[list[bytes]] = []

    def spy(rnd, client, msg):
        if len(sent) < rnd:
            sent.append([])
        sent[-1].append(msg)
        return msg

    tap(sim, spy)
    return sent


def _payload_bits(msg: bytes) -> int:
    return 8 * (len(msg) - 8 - int.from_bytes(msg[4:8], "little"))


def test_bytes_are_L_by_L_float32_per_device_per_direction():
    sim = Simulation(_cfg(rounds=3))
    sent = _record_uploads(sim)
    recs = [sim.round(r) for r in (1, 2, 3)]
    for r, rec in enumerate(recs, 1):
        msgs = sent[r - 1]
        assert len(msgs) == M and all(_payload_bits(m) == L * L * 32 for m in msgs)  # the paper's L*L*32 bits
        assert rec["bytes_up"] == sum(len(m) for m in msgs)
        # down: FD sends no model and nothing shared; from round 2 each device gets its own teacher (L x L
        # float32); round 1 has no teacher yet, so nothing at all goes down
        teach = [wire.encode({TEACHER: torch.zeros(L, L)}, {"round": r, "client": k}) for k in range(M)]
        assert all(_payload_bits(t) == L * L * 32 for t in teach)
        expected_down = sum(len(t) for t in teach) if r > 1 else 0
        assert rec["bytes_down"] == expected_down
    # independent of the model size: a 10x wider model sends the same bytes
    big = Simulation(_cfg(rounds=1, models=[{"name": "mlp", "hidden": [160]}]))
    sent_big = _record_uploads(big)
    big.round(1)
    assert [_payload_bits(m) for m in sent_big[0]] == [L * L * 32] * M


def test_teacher_is_others_uploads_over_M_minus_1():
    sim = Simulation(_cfg(rounds=2))
    sent = _record_uploads(sim)
    sim.round(1)
    ups = torch.stack([wire.decode(m).tensors[LOGITS] for m in sent[0]])  # what the server received
    assert ups.shape == (M, L, L)
    seen = {}
    orig = sim.algorithm.train_client

    def spy(task, k):
        seen[k] = task.personal[k][TEACHER].clone()
        return orig(task, k)

    sim.algorithm.train_client = spy
    sim.round(2)
    T = teachers(ups)
    for k in range(M):
        torch.testing.assert_close(seen[k], T[k])
        # the device's own averages are not in its teacher: compare with the plain (sum - own)/(M - 1)
        others = [ups[j] for j in range(M) if j != k]
        held_by_all = (ups.sum(-1) > 0.5).all(0)
        torch.testing.assert_close(seen[k][held_by_all], (sum(others) / (M - 1))[held_by_all])


def _plain_ce_run(sim: Simulation, k: int, start: dict, rnd: int) -> dict:
    """Device k's round ``rnd`` as fedloom's ordinary local SGD on cross-entropy, from ``start``."""
    task = CohortJob(sim.algorithm.template(k), start, {}, [k], sim.data, sim.round_schedule(rnd),
                      FedAvg(AlgorithmParams()), sim.cfg.seed, rnd, sim.device)
    out = local_sgd(task, k)
    return {n: start[n] + out.update[n] for n in start}


@pytest.mark.parametrize("gamma", [0.0, 1.0])
def test_gamma_zero_equals_plain_cross_entropy_training(gamma):
    sim = Simulation(_cfg(rounds=2, gamma=gamma))
    init = {k: sim.algorithm.device_init(k)["params"] for k in range(M)}
    sim.round(1)  # gamma is 0 in the first global iteration whatever the config says
    after1 = {k: {n: t.clone() for n, t in sim.client_states[k]["params"].items()} for k in range(M)}
    for k in range(M):
        ref = _plain_ce_run(sim, k, init[k], 1)
        for n in ref:
            torch.testing.assert_close(after1[k][n], ref[n], rtol=1e-5, atol=1e-6)
    rec = sim.round(2)  # now the teacher exists: gamma = 0 stays plain CE, gamma = 1 must differ
    diffs = []
    for k in range(M):
        ref = _plain_ce_run(sim, k, after1[k], 2)
        diffs.append(max(float((sim.client_states[k]["params"][n] - ref[n]).abs().max()) for n in ref))
    if gamma == 0:
        assert max(diffs) < 1e-5, diffs
    else:
        assert min(diffs) > 1e-3, diffs
    assert rec["test_accuracy_min"] <= rec["test_accuracy"] <= rec["test_accuracy_max"]


def test_heterogeneous_device_models():
    models = [{"name": "mlp", "hidden": [16]}, "logreg", {"name": "cnn", "channels": [4], "hidden": 8}]
    sim = Simulation(_cfg(rounds=2, models=models))
    recs = sim.run()
    arch = [sorted(sim.client_states[k]["params"]) for k in range(M)]
    assert arch[0] == ["1.bias", "1.weight", "3.bias", "3.weight"]  # mlp
    assert arch[1] == ["1.bias", "1.weight"]  # logreg
    assert any(sim.client_states[2]["params"][n].dim() == 4 for n in arch[2])  # conv kernel
    assert all(r["reported"] == M and not r["rejected"] for r in recs)
    assert recs[-1]["test_accuracy"] > 0.3
    # models are cycled: a 4th device would get models[0] again
    assert sim.algorithm.spec(3) == sim.algorithm.spec(0)


def test_fd_resumes_from_checkpoint_with_device_models(tmp_path):
    a = Simulation(_cfg(rounds=3, checkpoint_every=1), out_dir=tmp_path / "a")
    a.run()
    b = Simulation(_cfg(rounds=3, checkpoint_every=1), out_dir=tmp_path / "b")
    b.round(1), b.round(2)
    b.metrics.close()
    c = Simulation.resume(tmp_path / "b")
    c.run()
    for k in range(M):
        for n, t in a.client_states[k]["params"].items():
            torch.testing.assert_close(c.client_states[k]["params"][n], t)
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2, 3]
    saved = torch.load(tmp_path / "a" / "model.pt")  # model.pt holds every device's own model
    assert sorted(saved["devices"]) == list(range(M)) and saved["devices"][0]["spec"]["name"] == "mlp"
    torch.testing.assert_close(saved["devices"][1]["params"]["1.weight"], a.client_states[1]["params"]["1.weight"])


def test_fd_with_faug_from_config():
    gan = {"z_dim": 8, "g_hidden": [16], "d_hidden": [16], "steps": 20, "batch_size": 16}
    cfg = _cfg(rounds=1)
    raw = cfg.model_dump()
    raw["algorithm"] = {"name": "fd", "faug": {"seeds_per_label": 3, "redundant_labels": 1, "gan": gan}}
    sim = Simulation(validate_config(raw))
    for k in range(M):
        counts = torch.bincount(sim.data.client_data(k)[1], minlength=L)
        assert int(counts.min()) > 3  # the target labels (3 samples each) were filled by the generator
    # FAug ran in prepare_data, before anything was sized from the data: the planner sees the augmented sizes
    assert sim.data.source.name == "digits+faug"
    assert sim.built.planner.sizes.tolist() == [float(len(i)) for i in sim.data.client_indices]
    rec = sim.round(1)
    assert rec["faug_device_server_pl"] == pytest.approx(2 / 3)  # 2 targets, 1 redundant label
    assert rec["faug_generator_bytes"] > 4 * rec["faug_generator_params"]
    assert rec["faug_seed_bits_formula"] == [8 * 3 * 3 * 64] * M  # 3 labels x 3 seeds x 8x8 pixels x 8 bits


def test_bad_fd_params_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        _cfg(models=[{"name": "resnet"}])
    with pytest.raises(ConfigError, match="gamma"):
        _cfg(gamma=-1.0)
    with pytest.raises(ConfigError, match="oversample"):
        validate_config({"algorithm": {"name": "fd", "faug": {"oversample": -1}}})
    with pytest.raises(ConfigError, match="codecs / algorithm.name: algorithm 'fd' does not upload a model update"):
        _cfg(codecs=[{"name": "quantize", "bits": 8}])
    for section, value in (("privacy", {"clip": 1.0}), ("aggregator", "median"),
                           ("secure_aggregation", {"key_bits": 1024})):
        with pytest.raises(ConfigError, match=f"{section} / algorithm.name: algorithm 'fd' aggregates its own way"):
            _cfg(**{section: value})
    with pytest.raises(ValueError, match="models\\[0\\] \\(cnn\\) does not fit"):
        Simulation(_cfg(models=[{"name": "cnn", "channels": [4, 4, 4, 4]}]))


def test_invalid_uploads_left_out_and_partial_participation():
    """A sign-flipping device's 'averages' are not probabilities: the server leaves them out of the teachers
    (and says so) instead of failing the round. With a cohort of 2 of 3, a device that did not upload in the
    last round gets the mean of all uploads."""
    sim = Simulation(_cfg(rounds=3, attack={"name": "sign_flip", "fraction": 0.34, "factor": 1.0}))
    (bad,) = sim.built.attack.attackers
    recs = sim.run()
    assert all(r["fd_invalid"] == [bad] for r in recs)
    assert bad not in sim.state.algo_state["fd"]["clients"].tolist()
    T = sim.algorithm.personal(sim.state, bad)[TEACHER]  # bad's upload did not count: the others' mean
    ups = sim.state.algo_state["fd"]["logits"]
    assert ups.shape[0] == M - 1
    held = (ups.sum(-1) > 0.5).all(0)
    torch.testing.assert_close(T[held], ups.mean(0)[held])
    part = Simulation(_cfg(rounds=3, cohort_size=2))
    recs = part.run()
    assert all(r["reported"] == 2 for r in recs) and len(part.client_states) >= 2

"""The algorithm contract: every registered algorithm, found in the registry (so a new one is covered without
editing this file), runs two rounds on tiny data through the real round loop and

* gives the same model on both engines where it is local SGD on a loss (vectorized == sequential to 1e-5),
  and falls back to the sequential engine, saying why, where it runs its own client code;
* resumes from a checkpoint to exactly the uninterrupted run (server state, client states, metrics);
* counts bytes_up / bytes_down from the real messages that crossed between the two sides;
* declares its aggregation honestly (``Traits.plain_mean`` iff it has no rule of its own).

An algorithm that needs a special model or data says so in its ``contract_config``.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fedloom.components  # noqa: F401  (register everything)
from fedloom import wire
from fedloom.config import validate_config
from fedloom.core import LocalSGDAlgorithm
from fedloom.registry import ALGORITHMS
from fedloom.simulation import Simulation
from tests.conftest import small_config

NAMES = ALGORITHMS.names()


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def contract_raw(name: str, **over) -> dict:
    cls = ALGORITHMS.get(name)
    raw = small_config(rounds=2, cohort_size=4, checkpoint_every=1, algorithm=name)
    raw["data"]["num_clients"] = 8
    raw = _merge(raw, cls.contract_config)
    if isinstance(raw["algorithm"], str):
        raw["algorithm"] = {"name": raw["algorithm"]}
    raw["algorithm"]["name"] = name
    return _merge(raw, over)


def _same(a, b, path="state"):
    """Exact equality of nested states (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _records(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


class Recorder:
    """Wraps the client runtime: what went down and what came up, as bytes."""

    def __init__(self, inner):
        self.inner, self.rounds = inner, []

    def run(self, rnd, down, clients):
        ups = self.inner.run(rnd, down, clients)
        self.rounds.append((down, list(clients), ups))
        return ups

    def round_metrics(self):
        return self.inner.round_metrics()


def test_every_algorithm_declares_a_working_contract_config():
    assert len(NAMES) >= 12
    for name in NAMES:
        validate_config(contract_raw(name))


@pytest.mark.parametrize("name", NAMES)
def test_engines_agree_and_bytes_are_real(name):
    cls = ALGORITHMS.get(name)
    runs = {}
    for eng in ("vectorized", "sequential"):
        sim = Simulation(validate_config(contract_raw(name, engine=eng)))
        if not issubclass(cls, LocalSGDAlgorithm):
            assert sim.engine.name == "sequential" and (eng == "sequential" or "own client code" in sim.engine_note)
        rec = Recorder(sim.client_runtime)
        sim.client_runtime = rec
        recs = sim.run()
        runs[eng] = sim
        for r, (down, clients, ups) in zip(recs, rec.rounds):
            assert r["bytes_up"] == sum(len(m) for _, m in ups) > 0
            assert r["bytes_down"] == len(down.shared) * len(r["sampled_ids"]) + sum(map(len, down.personal.values()))
            assert [k for k, _ in ups] == clients == r["reported_ids"] + [x["client"] for x in r["rejected"]]
            for _, m in ups:  # every upload is a real, decodable message
                assert len(wire.decode(m).tensors) > 0
        assert all(r["rejected"] == [] for r in recs)
    if issubclass(cls, LocalSGDAlgorithm):
        a, b = runs["vectorized"].state.params, runs["sequential"].state.params
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_resume_equals_uninterrupted(name, tmp_path):
    cfg = validate_config(contract_raw(name, rounds=3))
    whole = Simulation(cfg, tmp_path / "whole")
    recs = whole.run()
    part = Simulation(cfg, tmp_path / "part")
    part.round(1)  # checkpoint_every=1: a checkpoint after round 1, then the process "dies"
    part.metrics.close()
    resumed = Simulation.resume(tmp_path / "part")
    assert resumed.state.round == 1
    recs2 = resumed.run()
    assert _records(recs2) == _records(recs)
    _same(resumed.state.params, whole.state.params, "params")
    _same(dict(resumed.state.algo_state), dict(whole.state.algo_state), "algo_state")
    _same(resumed.client_states, whole.client_states, "client_states")
    _same(resumed.built.clients.pipeline_states, whole.built.clients.pipeline_states, "pipeline_states")


@pytest.mark.parametrize("name", NAMES)
def test_aggregation_is_declared(name):
    sim = Simulation(validate_config(contract_raw(name, rounds=1)))
    own = sim.algorithm.make_aggregator(sim.ctx)
    assert (own is None) == type(sim.algorithm).traits.plain_mean

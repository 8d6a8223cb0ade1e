"""The vectorized engine's factored first layer (plain SGD, a model that starts with a Linear layer): the same
model as the dense vectorized path and as the sequential reference, and used only where it is exact."""

import dataclasses

import pytest
import torch

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config

# unequal client sizes (quantity skew: padded rows and inactive steps), a per-step lr schedule, two hidden layers
BASE = {"data.partition": dict(name="quantity_skew", sigma=1.5), "data.num_clients": 12, "cohort_size": 6,
        "model": dict(name="mlp", hidden=[48, 24]), "client.batch_size": 8, "rounds": 3,
        "client.lr_schedule": dict(name="step", milestones=[3], decay=0.5)}


def _run(engine, **ov):
    sim = Simulation(validate_config(small_config(engine=engine, **{**BASE, **ov})))
    recs = sim.run()
    return sim.state.params, recs


def _rel(a, b):
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)) for k in a)


@pytest.mark.parametrize("case", ["fedavg", "fednova", "no-bias", "mixed-auto"])
def test_factored_equals_dense_and_sequential(case, monkeypatch):
    import fedloom.engine.vectorized as V

    calls = []
    orig = V._factored_chunk
    monkeypatch.setattr(V, "_factored_chunk", lambda *a, **k: calls.append(1) or orig(*a, **k))
    ov = {"fednova": {"algorithm": "fednova"}, "fedavg": {}, "no-bias": {"model": dict(name="mlp_nobias")},
          # auto: the 64x256 layer as factors, the 256x8 and 8x10 layers with per-client weights (factors larger)
          "mixed-auto": {"model": dict(name="mlp", hidden=[256, 8]), "client.batch_size": 4,
                         "algorithm": dict(name="localsgd", local_steps=2)}}[case]
    if case == "no-bias":  # a first Linear layer without bias
        from fedloom.registry import MODELS

        def nobias(shape, k, p):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 40, bias=False), torch.nn.ReLU(),
                                       torch.nn.Linear(40, k))

        monkeypatch.setitem(MODELS._entries, "mlp_nobias", dataclasses.replace(MODELS.entry("mlp"), factory=nobias))
    fact, rf = _run(dict(name="vectorized", factored="auto" if case == "mixed-auto" else "always"), **ov)
    assert calls, "the factored path was not taken"
    dense, rd = _run(dict(name="vectorized", factored="never"), **ov)
    seq, rs = _run("sequential", **ov)
    assert _rel(fact, dense) <= 1e-5 and _rel(fact, seq) <= 1e-5
    for a, b in zip(rf, rs):  # the reported train losses and accuracies agree too
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-9)


@pytest.mark.parametrize("ov", [{"client.momentum": 0.9}, {"client.weight_decay": 0.01},
                                {"algorithm": dict(name="fedprox", mu=0.1)}, {"algorithm": "scaffold"},
                                {"client.optimizer": "adam"}, {"model": dict(name="cnn", channels=[4], hidden=8)}])
def test_factored_path_only_where_it_is_exact(ov, monkeypatch):
    """Momentum, weight decay, a modified objective, per-client inputs, a non-SGD optimizer or a model that does
    not start with a Linear layer keep the dense path even when ``factored=always``."""
    import fedloom.engine.vectorized as V

    monkeypatch.setattr(V, "_factored_chunk", lambda *a, **k: pytest.fail("factored path taken"))
    _run(dict(name="vectorized", factored="always", cpu_conv="vmap"), **{**ov, "rounds": 1})


def test_auto_uses_factors_only_when_smaller(monkeypatch):
    import fedloom.engine.vectorized as V

    taken = []
    orig = V._factored_chunk
    monkeypatch.setattr(V, "_factored_chunk", lambda *a, **k: taken.append(1) or orig(*a, **k))
    _run("vectorized", rounds=1, **{"model": dict(name="mlp", hidden=[16])})  # 64 x 16 weights: dense is smaller
    assert not taken
    _run("vectorized", rounds=1, **{"model": dict(name="mlp", hidden=[512]), "client.batch_size": 4,
                                    "client.local_steps": 2, "algorithm": dict(name="localsgd", local_steps=2)})
    assert taken


def test_auto_plan_per_layer():
    """auto factors exactly the layers whose factors are smaller than their weights."""
    import fedloom.engine.vectorized as V

    sim = Simulation(validate_config(small_config(rounds=1, model=dict(name="mlp", hidden=[256, 8]))))
    job = type("J", (), {})()
    for a in ("reparam", "per_client_start", "buffers", "optimizer_states"):
        setattr(job, a, None)
    job.algorithm, job.schedule, job.model = sim.algorithm, sim.ctx.schedule, sim.ctx.model
    x = torch.zeros(3, 1, 8, 8)
    assert V.factored_layers(job, x, rows=8) == [True, False, False]
    assert V.factored_layers(job, x, rows=8, force=True) == [True, True, True]
    assert V.factored_layers(job, x, rows=10_000) is None  # no layer pays: the dense path

"""Permutation invariance, Hungarian matching (PFNM/FedMA style) and the matched-averaging algorithm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedloom.algorithms.matching import hidden_units, match_to, matched_average, permute_units, weighted_mean
from fedloom.config import validate_config
from fedloom.data.datasets import load_dataset
from fedloom.models import build_model
from fedloom.simulation import Simulation

torch.set_num_threads(1)

MODELS = [
    ("mlp", {"hidden": [32, 16]}, (1, 8, 8)),
    ("cnn", {"channels": [4, 8], "hidden": 16, "kernel_size": 3}, (1, 8, 8)),
    ("cnn", {"channels": [4, 8], "hidden": 16, "kernel_size": 3, "norm": "group", "groups": 8}, (1, 8, 8)),
]


def _params(m):
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def _random_perms(units, gen):
    return [torch.randperm(n, generator=gen) for n in units.sizes]


def _plant(params, units, perms):
    for layer, p in enumerate(perms):
        params = permute_units(params, units, layer, p)
    return params


@pytest.mark.parametrize("name,mp,shape", MODELS)
def test_permuted_network_computes_the_same_function(name, mp, shape):
    """Fed2 eq. (1): W1 W0 X = (W1 P)(P^T W0) X -- hidden-unit permutations leave the outputs unchanged."""
    torch.manual_seed(0)
    m = build_model(name, mp, shape, 10)
    units = hidden_units(m)
    p = _params(m)
    q = _plant(p, units, _random_perms(units, torch.Generator().manual_seed(1)))
    x = torch.randn(7, *shape)
    assert any(not torch.equal(p[k], q[k]) for k in p)
    assert torch.allclose(functional_call(m, p, (x,)), functional_call(m, q, (x,)), atol=1e-5)


@pytest.mark.parametrize("name,mp,shape", MODELS)
def test_matching_recovers_a_planted_permutation_exactly(name, mp, shape):
    torch.manual_seed(0)
    m = build_model(name, mp, shape, 10)
    units = hidden_units(m)
    p = _params(m)
    perms = _random_perms(units, torch.Generator().manual_seed(2))
    q = _plant(p, units, perms)
    q = {k: v + 1e-4 * torch.randn_like(v) for k, v in q.items()}  # a little training noise on top
    aligned, found = match_to(p, q, units)
    for planted, f in zip(perms, found):
        assert torch.equal(f, planted.argsort())  # new unit i = permuted unit f[i] = original unit i
    for k in p:
        assert torch.allclose(aligned[k], p[k], atol=1e-3)


def _train_digits_mlp(seed: int, steps: int = 300):
    src = load_dataset("digits")
    torch.manual_seed(seed)
    m = build_model("mlp", {"hidden": [64, 32]}, src.input_shape, 10)
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(len(src.train_x), (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(src.train_x[i]), src.train_y[i]).backward()
        opt.step()
    return m, src


def _acc(m, p, src):
    with torch.no_grad():
        return float((functional_call(m, p, (src.test_x,)).argmax(1) == src.test_y).float().mean())


def test_coordinate_averaging_degrades_and_matched_averaging_recovers():
    """The Fed2 / FedMA motivation, executable: average a network with a hidden-unit permutation of itself."""
    m, src = _train_digits_mlp(0)
    units = hidden_units(m)
    a = _params(m)
    b = _plant(a, units, _random_perms(units, torch.Generator().manual_seed(3)))
    acc_a, acc_b = _acc(m, a, src), _acc(m, b, src)
    naive = weighted_mean([a, b], [1.0, 1.0])
    matched = matched_average([a, b], [1.0, 1.0], units)
    assert acc_a > 0.9 and acc_b == pytest.approx(acc_a)
    assert _acc(m, naive, src) < acc_a - 0.2
    assert _acc(m, matched, src) == pytest.approx(acc_a)


def test_unsupported_models_are_rejected():
    with pytest.raises(ValueError, match="nn.Sequential"):
        hidden_units(build_model("grouped_mlp", {"hidden": [8], "groups": 2}, (4,), 3))
    with pytest.raises(ValueError, match="permutation"):
        hidden_units(build_model("cnn", {"channels": [8], "hidden": 8, "norm": "group", "groups": 4}, (1, 8, 8), 3))


def _cfg(alg, **kw):
    raw = {"name": "t", "seed": 1, "rounds": 1, "cohort_size": 1, "progress": False, "threads": 1,
           "data": {"dataset": "digits", "num_clients": 6, "partition": "iid"},
           "model": {"name": "cnn", "channels": [4, 8], "hidden": 16, "kernel_size": 3},
           "algorithm": alg, "client": {"lr": 0.1, "batch_size": 16, "epochs": 1}}
    raw.update(kw)
    return validate_config(raw)


def test_matched_avg_of_one_client_is_that_client_up_to_permutation():
    """With a cohort of one, the matched average is the client's model aligned to the global one: the same
    function as FedAvg's result (which is exactly the client's model)."""
    fedavg = Simulation(_cfg("fedavg"))
    fedavg.run()
    matched = Simulation(_cfg({"name": "matched_avg", "iterations": 2}))
    matched.run()
    x = fedavg.data.source.test_x[:50]
    out_a = functional_call(fedavg.model, fedavg.state.params, (x,))
    out_b = functional_call(matched.model, matched.state.params, (x,))
    assert torch.allclose(out_a, out_b, atol=1e-4)


def test_matched_avg_runs_vectorized_and_matches_sequential():
    recs = {}
    for eng in ("vectorized", "sequential"):
        sim = Simulation(_cfg("matched_avg", engine=eng, rounds=2, cohort_size=3,
                              model={"name": "mlp", "hidden": [16, 8]}))
        assert sim.engine.name == eng
        recs[eng] = (sim.run()[-1]["test_accuracy"], sim.state.params)
    assert recs["vectorized"][0] == pytest.approx(recs["sequential"][0], abs=1e-6)
    for k, v in recs["vectorized"][1].items():
        assert torch.allclose(v, recs["sequential"][1][k], atol=1e-5)

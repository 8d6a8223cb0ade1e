"""HeteroFL (Diao et al. 2021): nested sub-models by masks; per-coordinate averaging over holders."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError
from torch.func import functional_call

from fedloom.algorithms.heterofl import HeteroFL, HeteroFLParams, holder_average, kept_units, width_mask
from fedloom.algorithms.matching import hidden_units
from fedloom.config import validate_config
from fedloom.models import build_model
from fedloom.simulation import Simulation

torch.set_num_threads(1)


def _holds(name, idx, units, kept):
    """Oracle: does a client keeping ``kept[l]`` units hold coordinate ``idx`` of ``name``?"""
    return all(idx[a.dim] // a.span < kept[a.layer] for a in units.axes.get(name, ()))


@pytest.mark.parametrize("name,mp", [("mlp", {"hidden": [4, 3]}),
                                     ("cnn", {"channels": [4], "hidden": 6, "kernel_size": 3})])
def test_holder_average_counts_each_coordinates_holders(name, mp):
    m = build_model(name, mp, (1, 4, 4), 3)
    units = hidden_units(m)
    ratios = [1.0, 0.5, 0.25]
    weights = [1.0, 2.0, 4.0]
    gen = torch.Generator().manual_seed(0)
    ups = [{k: torch.randn(v.shape, generator=gen) for k, v in m.named_parameters()} for _ in ratios]
    out = holder_average(ups, weights, ratios, units)
    kept = [kept_units(units.sizes, r) for r in ratios]
    for k, t in out.items():
        for idx in itertools.product(*map(range, t.shape)):
            holders = [c for c in range(3) if _holds(k, idx, units, kept[c])]
            assert holders, "the full-width client holds everything"
            want = sum(weights[c] * float(ups[c][k][idx]) for c in holders) / sum(weights[c] for c in holders)
            assert float(t[idx]) == pytest.approx(want, abs=1e-5), (k, idx, holders)


def test_hand_computed_holders_and_unheld_coordinates_keep_values():
    m = build_model("mlp", {"hidden": [4]}, (2,), 2)  # 1.weight [4, 2], 3.weight [2, 4]
    units = hidden_units(m)
    assert kept_units(units.sizes, 0.5) == [2] and kept_units(units.sizes, 0.25) == [1]
    ups = [{k: torch.full(v.shape, float(c + 1)) for k, v in m.named_parameters()} for c in range(2)]
    out = holder_average(ups, [1.0, 1.0], [0.5, 0.25], units)
    # hidden unit 0: both clients -> 1.5; unit 1: only the r=0.5 client -> 1; units 2, 3: nobody -> 0
    assert out["1.weight"][:, 0].tolist() == [1.5, 1.0, 0.0, 0.0]
    assert out["1.bias"].tolist() == [1.5, 1.0, 0.0, 0.0]
    assert out["3.weight"][0].tolist() == [1.5, 1.0, 0.0, 0.0]
    assert out["3.bias"].tolist() == [1.5, 1.5]  # output layer rows are held by everyone


@pytest.mark.parametrize("name,mp", [("mlp", {"hidden": [8, 6]}),
                                     ("cnn", {"channels": [4, 6], "hidden": 10, "kernel_size": 3})])
def test_masked_model_is_the_narrow_sub_model(name, mp):
    """The mask implementation computes exactly the HeteroFL sub-model (first ceil(r h) units per layer)."""
    torch.manual_seed(0)
    full = build_model(name, mp, (1, 8, 8), 5)
    units = hidden_units(full)
    r = 0.5
    kept = kept_units(units.sizes, r)
    p = {k: v.detach() for k, v in full.named_parameters()}
    masked = {k: v * m if (m := width_mask(v.shape, k, units, kept)) is not None else v for k, v in p.items()}
    if name == "mlp":
        narrow_p = {"hidden": kept}
    else:
        narrow_p = {"channels": kept[:2], "hidden": kept[2], "kernel_size": 3}
    narrow = build_model(name, narrow_p, (1, 8, 8), 5)
    sliced = {k: p[k][tuple(slice(0, s) for s in v.shape)] for k, v in narrow.named_parameters()}
    # the CNN's first FC reads flattened channels: take the first kept channels' H*W blocks
    if name == "cnn":
        fc = [k for k in sliced if k.endswith("weight") and p[k].dim() == 2][0]
        hw = p[fc].shape[1] // units.sizes[1]
        sliced[fc] = p[fc][: kept[2], : kept[1] * hw]
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(functional_call(full, masked, (x,)), functional_call(narrow, sliced, (x,)), atol=1e-5)


def _cfg(**kw):
    raw = {"name": "t", "seed": 5, "rounds": 2, "cohort_size": 4, "progress": False, "threads": 1,
           "data": {"dataset": "digits", "num_clients": 8, "partition": {"name": "dirichlet", "alpha": 0.5}},
           "model": {"name": "mlp", "hidden": [16, 8]},
           "algorithm": {"name": "heterofl", "ratios": [1.0, 0.5, 0.25], "scaler": True},
           "client": {"lr": 0.1, "batch_size": 16, "epochs": 1, "weight_decay": 1e-3}}
    raw.update(kw)
    return validate_config(raw)


def test_heterofl_vectorized_equals_sequential():
    res = {}
    for eng in ("sequential", "vectorized"):
        sim = Simulation(_cfg(engine=eng))
        assert sim.engine.name == eng
        res[eng] = (sim.run(), sim.state.params)
    for k, v in res["vectorized"][1].items():
        assert torch.allclose(v, res["sequential"][1][k], atol=1e-5), k
    assert res["vectorized"][0][-1]["test_accuracy"] == pytest.approx(res["sequential"][0][-1]["test_accuracy"])


def test_narrow_clients_leave_wide_coordinates_alone():
    """A cohort of r=0.5 clients never changes hidden units beyond the first half."""
    sim = Simulation(_cfg(rounds=1, algorithm={"name": "heterofl", "per_client": [0.5] * 8}))
    before = {k: v.clone() for k, v in sim.state.params.items()}
    sim.run()
    after = sim.state.params
    assert torch.equal(after["1.weight"][8:], before["1.weight"][8:])
    assert torch.equal(after["3.weight"][:, 8:], before["3.weight"][:, 8:])
    assert torch.equal(after["5.weight"][:, 4:], before["5.weight"][:, 4:])
    assert not torch.equal(after["1.weight"][:8], before["1.weight"][:8])


def test_ratio_assignment_and_validation():
    alg = HeteroFL(HeteroFLParams(ratios=[1.0, 0.5], proportions=[0.0, 1.0]))
    assert {alg.ratio(0, 1, k) for k in range(20)} == {0.5}
    alg = HeteroFL(HeteroFLParams(ratios=[1.0, 0.5, 0.25]))
    fixed = [alg.ratio(7, 1, k) for k in range(30)]
    assert fixed == [alg.ratio(7, 9, k) for k in range(30)] and len(set(fixed)) == 3
    dyn = HeteroFL(HeteroFLParams(ratios=[1.0, 0.5, 0.25], mode="dynamic"))
    assert [dyn.ratio(7, 1, k) for k in range(30)] != [dyn.ratio(7, 2, k) for k in range(30)]
    with pytest.raises(ValidationError):
        HeteroFLParams(ratios=[0.0])
    with pytest.raises(ValidationError):
        HeteroFLParams(ratios=[1.0, 0.5], proportions=[1.0])
    from fedloom.core import ClientReport

    with pytest.raises(ValueError, match="width_ratio"):
        alg.check_report(ClientReport(0, {}, 3, 0.0, {"width_ratio": 1.5}))

"""Fed2 (Yu et al. 2021): grouped model isolation, feature-paired averaging, engines agree."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from fedloom.algorithms.fed2 import Fed2, Fed2Params, PairedWeight, feature_paired_average, group_counts
from fedloom.config import validate_config
from fedloom.models import build_model, vmap_unsafe_reason
from fedloom.simulation import Simulation
from tests.conftest import through_the_wire

torch.set_num_threads(1)

GROUPED = [
    ("grouped_mlp", {"hidden": [24, 12], "groups": 3, "depth": 1}),
    ("grouped_mlp", {"hidden": [24, 12], "groups": 3, "depth": 0, "group_input": "full"}),
    ("grouped_mlp", {"hidden": [24, 12], "groups": 2, "depth": 2, "class_to_group": [1, 0, 1, 0, 1, 0, 1, 0, 1, 1]}),
    ("grouped_cnn", {"channels": [4, 8], "hidden": 16, "groups": 2, "depth": 1}),
    ("grouped_cnn", {"channels": [4, 8], "hidden": 16, "groups": 4, "depth": 0, "group_input": "full"}),
    ("grouped_cnn", {"channels": [4, 8], "hidden": 16, "groups": 2, "depth": 2, "class_to_group": [0] * 7 + [1] * 3}),
]


@pytest.mark.parametrize("name,params", GROUPED)
def test_logit_of_class_depends_only_on_its_group(name, params):
    """Gradient redirection (Fed2, structure adaptation): d logit_c / d theta_h = 0 for every group h != g(c),
    and group g(c) and the shared layers do receive gradient."""
    torch.manual_seed(0)
    m = build_model(name, params, (1, 8, 8), 10)
    assert vmap_unsafe_reason(m) is None
    x = torch.randn(5, 1, 8, 8)
    ps = dict(m.named_parameters())
    for c in range(10):
        g = m.class_to_group[c]
        grads = torch.autograd.grad(m(x)[:, c].sum(), list(ps.values()), allow_unused=True)
        own = 0.0
        for (n, p), gr in zip(ps.items(), grads):
            gr = torch.zeros_like(p) if gr is None else gr
            if n in m.group_layout:
                dim, owner = m.group_layout[n]
                other = gr.index_select(dim, torch.nonzero(owner != g).flatten())
                assert torch.count_nonzero(other) == 0, f"class {c}: {n} has gradient in another group"
                own += float(gr.index_select(dim, torch.nonzero(owner == g).flatten()).abs().sum())
            else:  # shared layers (the first shared layer always gets gradient)
                pass
        assert own > 0, f"class {c}: its own group gets no gradient"
    shared = [n for n in ps if n not in m.group_layout]
    if shared:
        g0 = torch.autograd.grad(m(x)[:, 0].sum(), [ps[shared[0]]])[0]
        assert g0.abs().sum() > 0


def test_class_order_and_invalid_maps():
    m = build_model("grouped_mlp", {"hidden": [8], "groups": 2, "depth": 0, "group_input": "full",
                                    "class_to_group": [1, 0, 1]}, (4,), 3)
    x = torch.randn(2, 4)
    # class 1 is group 0's only class -> head 0; classes 0 and 2 are head 1's rows 0 and 1
    h = m.grouped(m.shared(x))
    assert torch.allclose(m(x)[:, 1], m.heads[0](h.chunk(2, 1)[0])[:, 0])
    assert torch.allclose(m(x)[:, [0, 2]], m.heads[1](h.chunk(2, 1)[1]))
    with pytest.raises(ValueError, match="every group"):
        build_model("grouped_mlp", {"hidden": [8], "groups": 2, "class_to_group": [0, 0, 0]}, (4,), 3)
    with pytest.raises(ValueError, match="entries"):
        build_model("grouped_mlp", {"hidden": [8], "groups": 2, "class_to_group": [0, 1]}, (4,), 3)
    with pytest.raises(ValueError, match="divisible"):
        build_model("grouped_mlp", {"hidden": [9], "groups": 2, "depth": 0}, (4,), 3)


def test_feature_paired_average_hand_computed():
    """Two clients, G=2 groups, classes {0,1} -> group 0, {2} -> group 1, group 2 untrained by anyone."""
    cmap, G = [0, 0, 1, 2], 3
    layout = {"g": (0, torch.tensor([0, 0, 1, 2])),          # a grouped bias: entries 0,1 group 0; 2 group 1; 3 group 2
              "h": (1, torch.tensor([0, 1, 2]))}              # grouped along dim 1
    u1 = {"s": torch.tensor([1.0, 2.0]), "g": torch.tensor([1.0, 1.0, 1.0, 1.0]), "h": torch.ones(2, 3)}
    u2 = {"s": torch.tensor([3.0, 6.0]), "g": torch.tensor([4.0, 4.0, 4.0, 4.0]), "h": 4 * torch.ones(2, 3)}
    c1, c2 = [3, 1, 0, 0], [0, 2, 6, 0]       # n_1 = 4, n_2 = 8
    assert group_counts(c1, cmap, G) == [4.0, 0.0, 0.0] and group_counts(c2, cmap, G) == [2.0, 6.0, 0.0]
    w = [PairedWeight(4.0, tuple(group_counts(c1, cmap, G))), PairedWeight(8.0, tuple(group_counts(c2, cmap, G)))]
    out = feature_paired_average([u1, u2], w, layout)
    # shared: (4*[1,2] + 8*[3,6]) / 12
    assert torch.allclose(out["s"], torch.tensor([28 / 12, 56 / 12]))
    # group 0: (4*1 + 2*4)/6 = 2; group 1: only client 2 -> 4; group 2: nobody -> 0 (keep previous)
    assert torch.allclose(out["g"], torch.tensor([2.0, 2.0, 4.0, 0.0]))
    assert torch.allclose(out["h"], torch.tensor([[2.0, 4.0, 0.0]] * 2))


def _cfg(**kw):
    raw = {"name": "t", "seed": 3, "rounds": 2, "cohort_size": 4, "progress": False, "threads": 1,
           "data": {"dataset": "digits", "num_clients": 8, "partition": {"name": "dirichlet", "alpha": 0.3}},
           "model": {"name": "grouped_mlp", "hidden": [16, 8], "groups": 2, "depth": 1},
           "algorithm": {"name": "fed2"}, "client": {"lr": 0.1, "batch_size": 16, "epochs": 1}}
    for k, v in kw.items():
        raw[k] = v
    return validate_config(raw)


def test_fed2_vectorized_equals_sequential_and_reports_counts():
    runs = {}
    for eng in ("sequential", "vectorized"):
        sim = Simulation(_cfg(engine=eng, client={"lr": 0.1, "batch_size": 16, "epochs": 1, "momentum": 0.5}))
        assert sim.engine.name == eng
        recs = sim.run()
        runs[eng] = (sim.state.params, recs)
    ps, pv = runs["sequential"][0], runs["vectorized"][0]
    for k in ps:
        assert torch.allclose(ps[k], pv[k], atol=1e-5), k
    for a, b in zip(runs["sequential"][1], runs["vectorized"][1]):
        assert a["reported"] == b["reported"]  # (bytes may differ by a digit of the float train_loss in meta)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-6)


def test_label_counts_travel_in_meta():
    sim = Simulation(_cfg())
    from fedloom.engine import CohortJob
    cohort = sim.server.planner.plan(1, 0).reporting
    task = CohortJob(sim.model, sim.state.params, sim.buffers, cohort, sim.data, sim.round_schedule(1),
                     sim.algorithm, 0, 1, sim.device)
    outs = sim.engine.run(task)
    for k, o in zip(cohort, outs):
        got = through_the_wire(sim, o)
        assert got.meta["label_counts"] == sim.data.label_counts(k).tolist()
        assert sum(got.meta["label_counts"]) == got.num_samples


def test_untrained_group_keeps_its_weights():
    """One client holding one class per round: only its class's group (and the shared layers) move."""
    cfg = _cfg(rounds=1, cohort_size=1, data={"dataset": "digits", "num_clients": 10,
                                                "partition": {"name": "shards", "shards_per_client": 1}},
               model={"name": "grouped_mlp", "hidden": [40, 40], "groups": 5, "depth": 1})
    sim = Simulation(cfg)
    before = {k: v.clone() for k, v in sim.state.params.items()}
    k = sim.server.planner.plan(1, 0).reporting[0]
    sim.run()
    counts = sim.data.label_counts(k)
    trained = {sim.model.class_to_group[c] for c in range(10) if counts[c] > 0}
    assert len(trained) < 5
    for n, (dim, owner) in sim.model.group_layout.items():
        for g in range(5):
            idx = torch.nonzero(owner == g).flatten()
            if not len(idx):
                continue
            moved = not torch.equal(before[n].index_select(dim, idx), sim.state.params[n].index_select(dim, idx))
            assert moved == (g in trained), (n, g)
    assert not torch.equal(before["shared.1.weight"], sim.state.params["shared.1.weight"])


def test_bad_meta_and_model_rejected():
    from types import SimpleNamespace

    from fedloom.core import ClientReport

    alg = Fed2(Fed2Params())
    with pytest.raises(ValueError, match="grouped model"):
        alg.bind(SimpleNamespace(model=build_model("mlp", {"hidden": [8]}, (4,), 3)))
    alg.bind(SimpleNamespace(model=build_model("grouped_mlp", {"hidden": [8], "groups": 2}, (4,), 3)))
    with pytest.raises(ValueError, match="label_counts"):
        alg.check_report(ClientReport(0, {}, 3, 0.0, {"label_counts": [1, 2]}))
    with pytest.raises(ValueError, match="sum to"):
        alg.check_report(ClientReport(0, {}, 4, 0.0, {"label_counts": [1, 2, 0]}))
    # contiguous map for 3 classes, 2 groups: classes {0, 1} -> group 0, {2} -> group 1
    ok = ClientReport(0, {}, 3, 0.0, {"label_counts": [1, 2, 0]})
    alg.check_report(ok)
    assert alg.weight(ok) == PairedWeight(3.0, (3.0, 0.0))


def test_bad_meta_is_rejected_by_the_round_not_fatal(monkeypatch):
    sim = Simulation(_cfg(rounds=1))
    orig = sim.algorithm.client_meta
    monkeypatch.setattr(sim.algorithm, "client_meta", lambda task, k: {"label_counts": [-1] * 10}
                        if k == task.clients[0] else orig(task, k))
    rec = sim.round(1)
    assert len(rec["rejected"]) == 1 and "label_counts" in rec["rejected"][0]["reason"]
    assert rec["reported"] == rec["clients"] - 1


def test_grouped_forward_matches_functional_call():
    m = build_model("grouped_cnn", {"channels": [4, 8], "hidden": 16, "groups": 2, "depth": 1}, (1, 8, 8), 10)
    x = torch.randn(3, 1, 8, 8)
    p = {k: v.detach() for k, v in m.named_parameters()}
    b = dict(m.named_buffers())
    assert torch.allclose(functional_call(m, (p, b), (x,)), m(x))

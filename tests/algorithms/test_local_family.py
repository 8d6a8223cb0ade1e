"""Post-local and hierarchical local SGD in the simulator (equivalence with torch.distributed is in
tests/distributed/test_local_sgd.py); here: schedules, group models, errors."""

import pytest
import torch

from fedloom.config import ConfigError, validate_config
from fedloom.simulation import Simulation


def _cfg(alg: dict, rounds: int = 8, n: int = 4, **extra):
    return validate_config(dict(rounds=rounds, cohort_size=n, progress=False, seed=0, threads=1, checkpoint_every=0,
                                data=dict(dataset="digits", partition="iid", num_clients=n),
                                model=dict(name="mlp", hidden=[16]), algorithm=alg,
                                client=dict(lr=0.1, batch_size=8), **extra))


def test_postlocal_round_schedule():
    sim = Simulation(_cfg({"name": "postlocal", "local_steps": 4, "post_local_from": 8, "lr_milestones": [8],
                           "lr_decay": 0.5}))
    scheds = [sim.round_schedule(r) for r in range(1, 12)]
    assert [s.local_steps for s in scheds] == [1] * 8 + [4] * 3
    assert [s.lr for s in scheds] == [0.1] * 8 + [0.05] * 3


def test_hierarchical_keeps_group_models_between_global_syncs():
    h = Simulation(_cfg({"name": "hierarchical", "local_steps": 2, "group_size": 2, "global_every": 3}, rounds=3))
    p = Simulation(_cfg({"name": "postlocal", "local_steps": 2}, rounds=3))
    recs = h.run()
    p.run()
    assert [r["sync"] for r in recs] == ["group", "group", "global"]
    # group-only rounds in between: a different trajectory from global averaging every round
    diff = max(float((h.state.params[k] - p.state.params[k]).abs().max()) for k in p.state.params)
    assert diff > 1e-4
    # after round 1 the two groups hold different models, and each client was sent its group's
    h2 = Simulation(_cfg({"name": "hierarchical", "local_steps": 2, "group_size": 2, "global_every": 3}, rounds=3))
    h2.round(1)
    g = h2.state.algo_state["groups"]
    assert max(float((g[0][k] - g[1][k]).abs().max()) for k in g[0]) > 1e-4
    sent = h2.algorithm.personal(h2.state, 3)
    assert all(torch.equal(sent[k], g[1][k]) for k in g[1])
    for k in g[0]:  # the evaluated model is the groups' mean
        torch.testing.assert_close(h2.state.params[k], (g[0][k] + g[1][k]) / 2)


def test_hierarchical_equal_engines():
    a = Simulation(_cfg({"name": "hierarchical", "local_steps": 2, "group_size": 2}, rounds=3, engine="sequential"))
    b = Simulation(_cfg({"name": "hierarchical", "local_steps": 2, "group_size": 2}, rounds=3, engine="vectorized"))
    a.run(), b.run()
    for k in a.state.params:
        torch.testing.assert_close(a.state.params[k], b.state.params[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alg,field", [
    ({"name": "postlocal", "local_steps": 4, "post_local_from": 6}, "post_local_from"),
    ({"name": "postlocal", "local_steps": 4, "post_local_from": 8, "lr_milestones": [10]}, "lr_milestones"),
    ({"name": "hierarchical", "local_steps": 2}, "group_size"),
])
def test_bad_params_name_the_field(alg, field):
    with pytest.raises(ConfigError, match=field):
        _cfg(alg)


def test_groups_must_divide_clients():
    with pytest.raises(ValueError, match="group_size"):
        Simulation(_cfg({"name": "hierarchical", "local_steps": 2, "group_size": 3}))

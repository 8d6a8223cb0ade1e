"""Local SGD family on torch.distributed (Stich 2019; Lin et al. 2020): multi-process == single-process.

All 2-rank runs share one forked 2-process gloo group (process start-up is paid once), the hierarchical
runs one 4-process group; each job is compared against an independent single-process computation:
fedloom's simulator (``localsgd``), the plain K-workers-in-a-loop reference, or 1 rank with K times the batch.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedloom.config import validate_config
from fedloom.distributed.launch import run_jobs, spawn
from fedloom.distributed.local_sgd import LocalSGDConfig, sync_kind
from fedloom.distributed.reference import simulate
from fedloom.simulation import Simulation

BASE = dict(dataset="digits", model="mlp", model_params={"hidden": [16]}, batch_size=8, lr=0.1, seed=3)
JOBS2 = {
    # Stich's local SGD in fedloom's client sampling ("shard") == the simulator's localsgd algorithm
    "local_shard": dict(BASE, algorithm="local", local_steps=3, steps=12, sampling="shard", weight_decay=1e-3),
    # mini-batch SGD, 2 ranks x b=8 (== 1 rank x b=16, checked against the reference with K=1)
    "minibatch": dict(BASE, algorithm="minibatch", steps=10, momentum=0.9),
    # local SGD with local momentum buffers, Lin et al.'s reshuffled sampling
    "local_momentum": dict(BASE, algorithm="local", local_steps=4, steps=16, momentum=0.9, nesterov=True),
    "local_torch": dict(BASE, algorithm="local", local_steps=4, steps=16, momentum=0.9, nesterov=True,
                        averager="torch"),
    # post-local SGD: H=1 until the first lr decay t'=8, then H=4
    "postlocal": dict(BASE, algorithm="postlocal", local_steps=4, post_local_from=8, lr_milestones=[8], steps=20,
                      momentum=0.9),
    "postlocal_torch": dict(BASE, algorithm="postlocal", local_steps=4, post_local_from=8, lr_milestones=[8],
                            steps=20, momentum=0.9, averager="torch"),
    # post-local SGD in fedloom's client sampling, no momentum == the simulator's postlocal algorithm
    "postlocal_shard": dict(BASE, algorithm="postlocal", local_steps=3, post_local_from=6, lr_milestones=[6],
                            steps=15, sampling="shard", weight_decay=1e-3),
    # simulated slow link: 20 ms per collective
    "slow": dict(BASE, algorithm="local", local_steps=2, steps=8, latency_s=0.02),
}


def sim_config(engine: str) -> dict:
    return dict(rounds=2, cohort_size=5, progress=False, seed=1, threads=1, checkpoint_every=0, engine=engine,
                data=dict(dataset="digits", partition=dict(name="dirichlet", alpha=0.5), num_clients=10),
                model=dict(name="mlp", hidden=[16]), client=dict(lr=0.1, batch_size=16, epochs=1))


def close(a: dict, b: dict, tol: float = 1e-5) -> float:
    assert a.keys() == b.keys()
    d = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert d <= tol, f"max abs difference {d}"
    return d


@pytest.fixture(scope="module")
def two_ranks():
    jobs = [("train", c) for c in JOBS2.values()] + [("simulation", sim_config("distributed"))]
    res = spawn(run_jobs, 2, jobs, start_method="fork")
    names = list(JOBS2) + ["engine"]
    return {n: (res[0][i], res[1][i]) for i, n in enumerate(names)}


def test_ranks_agree_after_final_average(two_ranks):
    for name in JOBS2:
        r0, r1 = two_ranks[name]
        close(r0["params"], r1["params"], 1e-7)


def test_local_sgd_equals_simulator_localsgd(two_ranks):
    """2 gloo processes of local SGD == fedloom.simulation with algorithm localsgd (2 clients, H=3, uniform
    mean, server lr 1): the same shards (iid partitioner), the same client_batches, the same init."""
    c = JOBS2["local_shard"]
    cfg = validate_config(dict(
        rounds=c["steps"] // c["local_steps"], cohort_size=2, progress=False, seed=c["seed"], threads=1,
        checkpoint_every=0, engine="sequential",
        data=dict(dataset="digits", partition="iid", num_clients=2), model=dict(name="mlp", hidden=[16]),
        algorithm=dict(name="localsgd", local_steps=c["local_steps"]),
        client=dict(lr=c["lr"], batch_size=c["batch_size"], weight_decay=c["weight_decay"])))
    sim = Simulation(cfg)
    sim.run()
    close(two_ranks["local_shard"][0]["params"], sim.state.params)
    assert two_ranks["local_shard"][0]["comm"]["allreduces"] == c["steps"] // c["local_steps"]


def simulator_twin(c: dict, num_clients: int, algorithm: dict, engine: str = "vectorized") -> Simulation:
    """fedloom.simulation run of the same schedule as torch.distributed job ``c`` (sampling="shard")."""
    tp = c.get("post_local_from", 0)
    cfg = validate_config(dict(
        rounds=tp + (c["steps"] - tp) // c["local_steps"], cohort_size=num_clients, progress=False,
        seed=c["seed"], threads=1, checkpoint_every=0, engine=engine,
        data=dict(dataset="digits", partition="iid", num_clients=num_clients), model=dict(name="mlp", hidden=[16]),
        algorithm=dict(algorithm, local_steps=c["local_steps"], post_local_from=tp,
                       lr_milestones=c.get("lr_milestones", [])),
        client=dict(lr=c["lr"], batch_size=c["batch_size"], weight_decay=c.get("weight_decay", 0.0))))
    sim = Simulation(cfg)
    sim.run()
    return sim


def test_postlocal_equals_simulator_postlocal(two_ranks):
    """2 gloo processes of post-local SGD (t'=6 one-step rounds with lr decay at t', then H=3) == the
    simulator's postlocal algorithm with 2 clients."""
    c = JOBS2["postlocal_shard"]
    sim = simulator_twin(c, 2, {"name": "postlocal"})
    close(two_ranks["postlocal_shard"][0]["params"], sim.state.params)
    assert two_ranks["postlocal_shard"][0]["comm"]["by_kind"] == {"grad": 6, "global": 3}


def test_minibatch_two_ranks_equal_one_rank_with_double_batch(two_ranks):
    c = JOBS2["minibatch"]
    one = simulate(LocalSGDConfig(**dict(c, batch_size=2 * c["batch_size"])), 1)
    close(two_ranks["minibatch"][0]["params"], one["params"])
    comm = two_ranks["minibatch"][0]["comm"]
    nbytes = sum(v.numel() * 4 for v in one["params"].values())
    assert comm["allreduces"] == c["steps"] == comm["by_kind"]["grad"]
    assert comm["payload_bytes"] == c["steps"] * nbytes
    assert comm["wire_bytes"] == pytest.approx(c["steps"] * nbytes * 2 * (2 - 1) / 2)


@pytest.mark.parametrize("name", ["local_momentum", "postlocal"])
def test_matches_single_process_reference(two_ranks, name):
    c = LocalSGDConfig(**JOBS2[name])
    ref = simulate(c, 2)
    got = two_ranks[name][0]
    close(got["params"], ref["params"])
    comm = got["comm"]
    assert comm["by_kind"] == {k: v for k, v in ref["counts"].items() if v}
    if name == "postlocal":  # t' gradient all-reduces, then one parameter average every H steps
        assert comm["by_kind"] == {"grad": 8, "global": (20 - 8) // 4}
    assert got["allreduces_per_epoch"] == pytest.approx(comm["allreduces"] / got["epochs"])


@pytest.mark.parametrize("name", ["local", "postlocal"])
def test_torch_periodic_model_averager_matches(two_ranks, name):
    ours = two_ranks["local_momentum" if name == "local" else "postlocal"][0]
    theirs = two_ranks[f"{name}_torch"][0]
    close(ours["params"], theirs["params"], 1e-6)
    assert ours["comm"] == theirs["comm"]


def test_simulated_slow_link_counts_and_sleeps(two_ranks):
    r = two_ranks["slow"][0]
    n = r["comm"]["allreduces"]
    assert n == 8 // 2
    assert r["comm"]["link_sleep_s"] == pytest.approx(0.02 * n)
    assert r["wall_s"] >= 0.02 * n


def test_distributed_engine_two_ranks_equal_one_rank(two_ranks):
    """fedloom.simulation with engine=distributed on 2 ranks == the vectorized engine on 1 process."""
    sim = Simulation(validate_config(sim_config("vectorized")))
    sim.run()
    for r in two_ranks["engine"]:
        close(r, sim.state.params)
    # and without a process group the engine is just its local engine
    sim1 = Simulation(validate_config(sim_config("distributed")))
    sim1.run()
    close(sim1.state.params, sim.state.params, 0.0)


def test_hierarchical_four_ranks():
    """Lin et al.'s hierarchical local SGD: groups {0,1},{2,3} average every H=2 steps, all ranks every
    H*H_b=4 steps after a t'=2 warm-up; fedloom's averaging and PyTorch's HierarchicalModelAverager ==
    the single-process reference."""
    c = dict(BASE, algorithm="hierarchical", group_size=2, local_steps=2, global_every=2, post_local_from=2,
             steps=14, momentum=0.9)
    shard = dict(c, momentum=0.0, sampling="shard")
    res = spawn(run_jobs, 4, [("train", c), ("train", dict(c, averager="torch")), ("train", shard)],
                start_method="fork")
    ref = simulate(LocalSGDConfig(**c), 4)
    # the simulator's hierarchical algorithm (4 clients, groups of 2, per-group models) == 4 gloo ranks
    sim = simulator_twin(shard, 4, {"name": "hierarchical", "group_size": 2, "global_every": 2})
    close(res[0][2]["params"], sim.state.params)
    syncs = [r["sync"] for r in sim.metrics.records]
    assert syncs == ["global"] * 3 + ["group", "global"] * 2 + ["group"]
    for r in res:
        ours, theirs, _ = r
        # step 14 is a group sync, not a global one: the returned model is the average of all ranks
        close(ours["params"], ref["params"])
        close(theirs["params"], ref["params"])
        assert ours["comm"]["by_kind"] == {"grad": 2, "group": 3, "global": 3} == \
            {k: v for k, v in ref["counts"].items() if v}
        assert ours["comm"] == theirs["comm"]


# -- schedule and bad launch configurations (no processes) ------------------------------------------------------
def test_schedule_matches_papers():
    loc = LocalSGDConfig(algorithm="local", local_steps=4)
    assert [t for t in range(1, 13) if sync_kind(loc, t)] == [4, 8, 12]  # I_T = {H, 2H, ...}
    post = LocalSGDConfig(algorithm="postlocal", local_steps=4, post_local_from=8)
    assert [sync_kind(post, t) for t in range(1, 13)] == ["grad"] * 8 + [None, None, None, "global"]
    hier = LocalSGDConfig(algorithm="hierarchical", local_steps=2, global_every=3, group_size=2)
    assert [sync_kind(hier, t) for t in range(1, 7)] == [None, "group", None, "group", None, "global"]


@pytest.mark.parametrize("kw,field", [
    (dict(local_steps=0), "local_steps"),
    (dict(local_steps=-3), "local_steps"),
    (dict(algorithm="hierarchical", group_size=2, global_every=0), "global_every"),
    (dict(algorithm="hierarchical"), "group_size"),
    (dict(algorithm="postlocal", local_steps=4, post_local_from=6), "post_local_from"),
])
def test_bad_config_clear_error(kw, field):
    with pytest.raises(ValueError, match=field):
        LocalSGDConfig(**kw)


def test_world_not_divisible_into_groups():
    cfg = LocalSGDConfig(algorithm="hierarchical", group_size=2, local_steps=2)
    with pytest.raises(ValueError, match="world size 3 is not divisible into groups of 2"):
        cfg.check_world(3)
    with pytest.raises(ValueError, match="world size 3"):
        simulate(cfg, 3)


def test_cli_bad_launch_exits_2():
    p = subprocess.run([sys.executable, "-m", "fedloom.cli", "train-local-sgd", "local_steps=0"], check=False,
                       capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "local_steps" in p.stderr, p.stderr

"""Federated PPO/TRPO through the round loop: per-client physics, timestep weights, policy KL, returns in
metrics.jsonl, config errors, CLI, bit-identical resume."""

import json
from pathlib import Path

import pytest
import torch

from fedloom.config import ConfigError, validate_config
from fedloom.rl.envs import PHYSICS, get_dynamics
from fedloom.simulation import Simulation
from tests.conftest import through_the_wire


def rl_config(**over):
    raw = {
        "seed": 3, "rounds": 2, "cohort_size": 3, "eval_every": 1, "progress": False, "threads": 1,
        "engine": "sequential", "checkpoint_every": 0,
        "data": {"dataset": {"name": "cartpole", "dynamics": {"length": [0.3, 1.2], "masspole": [0.05, 0.4]},
                             "heldout_clients": 2},
                 "num_clients": 4},
        "model": {"name": "actor_critic", "hidden": [16]},
        "algorithm": {"name": "fedppo", "n_envs": 2, "n_steps": 32, "batch_size": 32, "n_epochs": 2,
                      "eval_episodes": 2, "kl_probe_steps": 64},
    }
    for k, v in over.items():
        node = raw
        *path, leaf = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return raw


def test_each_client_gets_its_own_physics():
    sim = Simulation(validate_config(rl_config()))
    data = sim.data
    assert data.num_clients == 4 and len(data.heldout) == 2
    lengths = [d["length"] for d in data.dynamics + data.heldout]
    assert len(set(lengths)) == 6 and all(0.3 <= x <= 1.2 for x in lengths)
    for k in range(4):
        env = data.vector_env(k, 2).envs[1]
        got = get_dynamics(env)
        assert got == {**PHYSICS["CartPole-v1"], **data.dynamics[k]}
        assert env.unwrapped.polemass_length == pytest.approx(data.dynamics[k]["masspole"] * data.dynamics[k]["length"])
    again = Simulation(validate_config(rl_config())).data
    assert again.dynamics == data.dynamics and again.heldout == data.heldout  # drawn from the seed
    other = Simulation(validate_config(rl_config(seed=4))).data
    assert other.dynamics != data.dynamics


@pytest.mark.parametrize("algorithm", ["fedppo", "fedtrpo"])
def test_rounds_record_returns_policy_kl_and_timestep_weights(algorithm, tmp_path):
    cfg = rl_config()
    if algorithm == "fedtrpo":
        cfg["algorithm"] = {"name": "fedtrpo", "n_envs": 2, "n_steps": 32, "eval_episodes": 2, "kl_probe_steps": 64}
    sim = Simulation(validate_config(cfg), tmp_path)
    before = {k: v.clone() for k, v in sim.state.params.items()}
    records = sim.run()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    for r in lines:
        assert r["reported"] == 3 and r["test_accuracy"] is None
        assert len(r["return_clients"]) == 4 and len(r["return_heldout"]) == 2
        assert r["return_mean"] == pytest.approx(sum(r["return_clients"]) / 4, abs=0.01)
        assert all(x >= 1 for x in r["return_clients"] + r["return_heldout"])  # CartPole pays 1 per step
        assert r["policy_kl"] > 0 and r["local_kl_mean"] > 0
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0
    assert records[-1]["return_heldout_mean"] == lines[-1]["return_heldout_mean"]
    assert any(not torch.equal(before[k], sim.state.params[k]) for k in before)
    if algorithm == "fedtrpo":  # every client's own step respected delta
        assert lines[0]["local_kl_mean"] <= 0.01 + 1e-6


def test_client_weight_is_its_timesteps():
    sim = Simulation(validate_config(rl_config(**{"algorithm.local_iterations": 2})))
    from fedloom.core import sample_weight
    from fedloom.engine.base import CohortJob

    task = CohortJob(sim.model, sim.state.params, sim.buffers, [1], sim.data, sim.round_schedule(1), sim.algorithm,
                     sim.cfg.seed, 1, sim.device, client_states=sim.client_states)
    out = sim.algorithm.train_client(task, 1)
    assert out.num_samples == 2 * 2 * 32  # n_envs * n_steps * local_iterations
    got = through_the_wire(sim, out)  # the server's view: the weight is the reported step count
    assert got.num_samples == 128 and sample_weight(got, sim.algorithm.p.weighting) == 128.0
    assert sample_weight(got, "uniform") == 1.0


def test_kl_penalty_coefficient_is_per_client_state():
    sim = Simulation(validate_config(rl_config(**{"algorithm.objective": "kl_penalty", "rounds": 1})))
    sim.run()
    assert sorted(sim.client_states) == sorted(sim.metrics.records[0]["reported_ids"])
    assert all(s["beta"] in (0.5, 1.0, 2.0) for s in sim.client_states.values())


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.dataset\.dynamics: .*unknown physical attribute.*'pole_colour'"):
        validate_config(rl_config(**{"data.dataset.dynamics": {"pole_colour": [0, 1]}}))
    with pytest.raises(ConfigError, match=r"data\.dataset\.dynamics: .*length: need a finite range"):
        validate_config(rl_config(**{"data.dataset.dynamics": {"length": [1.0, 0.5]}}))
    with pytest.raises(ConfigError, match=r"data\.dataset\.version: .*'Acrobot-v1' is not a version of CartPole-v1"):
        validate_config(rl_config(**{"data.dataset.version": "Acrobot-v1"}))
    assert validate_config(rl_config(**{"data.dataset.version": "CartPole-v0"})).data.dataset.params["version"] == \
        "CartPole-v0"
    with pytest.raises(ConfigError, match=r"algorithm\.batch_size"):
        validate_config(rl_config(**{"algorithm.batch_size": 1000}))
    with pytest.raises(ConfigError, match=r"algorithm\.clip_eps"):
        validate_config(rl_config(**{"algorithm.clip_eps": 0}))
    with pytest.raises(ValueError, match="model.distribution: CartPole-v1 has discrete actions"):
        Simulation(validate_config(rl_config(**{"model.distribution": "gaussian"})))
    with pytest.raises(ValueError, match="model.name: algorithm 'fedppo' needs model 'actor_critic'"):
        Simulation(validate_config(rl_config(model="mlp")))
    # a labelled dataset with fedppo, an environment with fedavg: test_environment_and_algorithm_kinds_...


def test_pendulum_gaussian_round(tmp_path):
    cfg = rl_config(**{"data.dataset": {"name": "pendulum", "heldout_clients": 1}, "data.num_clients": 2,
                       "cohort_size": 2, "rounds": 1, "model.distribution": "gaussian"})
    rec = Simulation(validate_config(cfg), tmp_path).run()[-1]
    assert rec["return_mean"] < 0 and len(rec["return_heldout"]) == 1  # Pendulum's rewards are costs
    assert rec["policy_kl"] > 0


def test_resume_is_bit_identical(tmp_path):
    full = Simulation(validate_config(rl_config(rounds=3, checkpoint_every=1)), tmp_path / "full")
    full.run()
    part = Simulation(validate_config(rl_config(rounds=3, checkpoint_every=1)), tmp_path / "part")
    part.round(1)
    part.metrics.close()
    resumed = Simulation.resume(tmp_path / "part")
    resumed.run()
    for k, v in full.state.params.items():
        assert torch.equal(v, resumed.state.params[k]), k
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}
    assert [strip(r) for r in a] == [strip(r) for r in b]


def test_cli_runs_the_example_config(tmp_path):
    from fedloom.cli import main

    out = tmp_path / "run"
    example = Path(__file__).resolve().parents[2] / "examples" / "fedppo_cartpole.yaml"
    rc = main(["run", str(example), "rounds=1", "data.num_clients=2", "cohort_size=2",
               "data.dataset.heldout_clients=1", "algorithm.n_steps=64", "algorithm.batch_size=64",
               "algorithm.n_epochs=1", "algorithm.eval_episodes=1", "progress=false", "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"return_mean", "return_clients", "return_heldout_mean", "return_heldout", "policy_kl"} <= set(rec)
    assert (out / "model.pt").is_file() and (out / "config.yaml").is_file()


def test_environment_and_algorithm_kinds_are_checked_at_validation():
    from fedloom.config import ConfigError, validate_config

    base = {"rounds": 1, "model": {"name": "actor_critic"}}
    with pytest.raises(ConfigError, match="data.dataset / algorithm.name: algorithm 'fedavg' needs a labelled dataset"):
        validate_config({**base, "data": {"dataset": "cartpole", "num_clients": 2}, "algorithm": "fedavg"})
    with pytest.raises(ConfigError, match="data.dataset / algorithm.name: algorithm 'fedppo' needs an RL environment"):
        validate_config({**base, "data": {"dataset": "digits", "num_clients": 2}, "algorithm": "fedppo"})

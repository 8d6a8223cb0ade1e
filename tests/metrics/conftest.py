"""Small real runs (digits, a few rounds, one thread) shared by the report, browser and tracking tests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedloom.config import validate_config
from fedloom.simulation import Simulation
from tests.conftest import small_config, tap


def _run(out: Path, raw: dict, rewrite=None) -> Path:
    sim = Simulation(validate_config(raw), out)
    if rewrite is not None:
        tap(sim, rewrite)
    sim.run()
    return out


def rl_config(**kw) -> dict:
    raw = dict(rounds=2, cohort_size=2, progress=False, seed=0, threads=1, engine="sequential", eval_every=1,
               data=dict(dataset=dict(name="cartpole", heldout_clients=2), num_clients=2),
               model=dict(name="actor_critic", distribution="categorical", hidden=[16]),
               algorithm=dict(name="fedppo", n_envs=1, n_steps=32, batch_size=32, n_epochs=1, eval_episodes=1))
    raw.update(kw)
    return raw


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """a: plain FedAvg; b: label skew, dropouts and one garbled upload (rejected); dp: DP-FedAvg (epsilon);
    rl: FedPPO on two CartPoles (returns on client and held-out dynamics)."""
    base = tmp_path_factory.mktemp("runs")
    garbled = {"n": 0}

    def garble(rnd, k, msg):
        if rnd == 2 and garbled["n"] == 0:
            garbled["n"] += 1
            return b"\x00garbage"
        return msg

    return {
        "a": _run(base / "a", small_config()),
        "b": _run(base / "b", small_config(**{"data.partition.alpha": 0.1, "system.dropout": 0.3}), garble),
        "dp": _run(base / "dp", small_config(privacy={"clip": 1.0, "noise_multiplier": 0.5})),
        "rl": _run(base / "rl", rl_config()),
    }


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)

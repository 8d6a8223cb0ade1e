"""Client learning-rate schedules: the formula, per-step rates in both engines, and that they really apply."""

import math

import pytest
import torch

from fedloom.config import ConfigError, validate_config
from fedloom.models.transformer import noam_lr
from fedloom.simulation import Simulation


def _cfg(engine="vectorized", lr=0.1, schedule=None, local_steps=5, rounds=3):
    client = {"lr": lr, "batch_size": 10, "local_steps": local_steps, "momentum": 0.5}
    if schedule is not None:
        client["lr_schedule"] = schedule
    return validate_config(dict(rounds=rounds, cohort_size=4, progress=False, seed=0, threads=1, checkpoint_every=0,
                                engine=engine, data=dict(dataset="digits", partition=dict(name="dirichlet", alpha=0.5),
                                                         num_clients=8),
                                model=dict(name="mlp", hidden=[16]), client=client))


def test_noam_formula():
    assert noam_lr(1, 512, 4000) == pytest.approx(512 ** -0.5 * 4000 ** -1.5)
    assert noam_lr(4000, 512, 4000) == pytest.approx(512 ** -0.5 * 4000 ** -0.5)  # the peak
    assert noam_lr(16000, 512, 4000) == pytest.approx(512 ** -0.5 / math.sqrt(16000))


def test_per_step_rates_follow_the_global_step():
    sim = Simulation(_cfg(lr=2.0, schedule={"name": "noam", "d_model": 64, "warmup": 7}))
    s2 = sim.round_schedule(2)
    assert s2.lr_steps == pytest.approx(tuple(2.0 * noam_lr(5 + s + 1, 64, 7) for s in range(5)))
    epoch = Simulation(_cfg(lr=2.0, schedule={"name": "noam", "d_model": 64, "warmup": 7}, local_steps=None))
    assert epoch.round_schedule(3).lr == pytest.approx(2.0 * noam_lr(3, 64, 7)) and epoch.round_schedule(3).lr_steps is None


def test_schedule_really_applies():
    """A step schedule decaying by 1/2 from the first step == the constant lr halved (bit-for-bit order aside)."""
    a = Simulation(_cfg(lr=0.1, schedule={"name": "step", "milestones": [0], "decay": 0.5}))
    b = Simulation(_cfg(lr=0.05))
    c = Simulation(_cfg(lr=0.1))
    a.run(), b.run(), c.run()
    for k in a.state.params:
        torch.testing.assert_close(a.state.params[k], b.state.params[k], rtol=1e-5, atol=1e-7)
    assert max(float((a.state.params[k] - c.state.params[k]).abs().max()) for k in a.state.params) > 1e-4


def test_engines_agree_under_warmup():
    sched = {"name": "noam", "d_model": 16, "warmup": 6}
    a, b = Simulation(_cfg("sequential", lr=4.0, schedule=sched)), Simulation(_cfg("vectorized", lr=4.0, schedule=sched))
    a.run(), b.run()
    for k in a.state.params:
        torch.testing.assert_close(a.state.params[k], b.state.params[k], rtol=1e-5, atol=1e-6)


def test_unknown_schedule_names_the_field():
    with pytest.raises(ConfigError, match="client.lr_schedule"):
        _cfg(schedule={"name": "cosine"})

"""Per-client dynamics are really applied: a step matches the textbook physics with the client's parameters."""

import math

import numpy as np
import pytest

from fedloom.rl.envs import (
    DEFAULT_DYNAMICS,
    PHYSICS,
    get_dynamics,
    make_env,
    make_vector_env,
    sample_dynamics,
)


def cartpole_step(state, action, p):
    """Barto, Sutton & Anderson's cart-pole equations (Euler), written out independently of gymnasium."""
    x, x_dot, th, th_dot = state
    total = p["masspole"] + p["masscart"]
    pml = p["masspole"] * p["length"]
    force = p["force_mag"] if action == 1 else -p["force_mag"]
    temp = (force + pml * th_dot ** 2 * math.sin(th)) / total
    th_acc = (p["gravity"] * math.sin(th) - math.cos(th) * temp) / (
        p["length"] * (4.0 / 3.0 - p["masspole"] * math.cos(th) ** 2 / total))
    x_acc = temp - pml * th_acc * math.cos(th) / total
    tau = p["tau"]
    return np.array([x + tau * x_dot, x_dot + tau * x_acc, th + tau * th_dot, th_dot + tau * th_acc])


def step_from(env, state, action):
    env.reset(seed=0)
    env.unwrapped.state = np.array(state, dtype=np.float64)
    return env.step(action)[0]


STATE = [0.01, -0.2, 0.05, 0.3]


@pytest.mark.parametrize("dyn", [{"length": 1.0, "masspole": 0.4}, {"gravity": 12.0, "masscart": 2.0},
                                 {"masspole": 0.3}, {"force_mag": 5.0, "tau": 0.01}])
def test_cartpole_step_follows_client_physics(dyn):
    env = make_env("CartPole-v1", dyn)
    params = {**PHYSICS["CartPole-v1"], **dyn}
    got = step_from(env, STATE, 1)
    np.testing.assert_allclose(got, cartpole_step(STATE, 1, params), rtol=1e-5, atol=1e-6)
    default = step_from(make_env("CartPole-v1"), STATE, 1)
    assert not np.allclose(got, default, rtol=1e-4, atol=1e-6)  # the change matters


def test_pendulum_step_follows_client_physics():
    dyn = {"g": 7.0, "m": 1.3, "l": 0.8}
    env = make_env("Pendulum-v1", dyn)
    env.reset(seed=0)
    th, thdot, u = 0.7, -0.4, 1.5
    env.unwrapped.state = np.array([th, thdot])
    obs = env.step(np.array([u], dtype=np.float32))[0]
    new_thdot = thdot + (3 * dyn["g"] / (2 * dyn["l"]) * math.sin(th) + 3.0 / (dyn["m"] * dyn["l"] ** 2) * u) * 0.05
    new_th = th + new_thdot * 0.05
    np.testing.assert_allclose(obs, [math.cos(new_th), math.sin(new_th), new_thdot], rtol=1e-5)


def test_acrobot_and_mountain_car_dynamics_change_the_trajectory():
    for env_id, dyn, action in [("Acrobot-v1", {"LINK_MASS_1": 1.5, "LINK_LENGTH_1": 0.8}, 2),
                                ("MountainCar-v0", {"force": 0.0015, "gravity": 0.002}, 2)]:
        a, b = make_env(env_id, dyn), make_env(env_id)
        oa, ob = a.reset(seed=3)[0], b.reset(seed=3)[0]
        np.testing.assert_array_equal(oa, ob)
        for _ in range(5):
            oa, ob = a.step(action)[0], b.step(action)[0]
        assert not np.allclose(oa, ob)
        assert get_dynamics(a) == {**PHYSICS[env_id], **dyn}


def test_vector_env_applies_dynamics_to_every_copy():
    dyn = {"length": 0.9, "masspole": 0.25, "gravity": 11.0}
    venv = make_vector_env("CartPole-v1", 4, dyn)
    for e in venv.envs:
        got = get_dynamics(e)
        assert got["length"] == 0.9 and got["masspole"] == 0.25 and got["gravity"] == 11.0
        assert e.unwrapped.total_mass == pytest.approx(0.25 + 1.0)
        assert e.unwrapped.polemass_length == pytest.approx(0.25 * 0.9)


def test_unknown_attribute_or_environment_is_rejected():
    with pytest.raises(ValueError, match="unknown physical attribute.*'pole_colour'.*allowed: gravity"):
        make_vector_env("CartPole-v1", 2, {"pole_colour": 1.0})
    with pytest.raises(ValueError, match="Acrobot-v1.*'gravity'"):  # a literal in Acrobot's _dsdt: not settable
        make_env("Acrobot-v1", {"gravity": 3.0})
    with pytest.raises(ValueError, match="no per-client physics table"):
        make_vector_env("LunarLander-v3", 1, {"gravity": 3.0})


def test_sample_dynamics_stays_in_range_and_is_seeded():
    ranges = DEFAULT_DYNAMICS["CartPole-v1"]
    draws = [sample_dynamics(ranges, np.random.default_rng(s)) for s in range(50)]
    for d in draws:
        for name, (lo, hi) in ranges.items():
            assert lo <= d[name] <= hi
    assert sample_dynamics(ranges, np.random.default_rng(7)) == sample_dynamics(ranges, np.random.default_rng(7))
    assert len({d["length"] for d in draws}) == 50

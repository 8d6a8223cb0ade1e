"""Classic-control environments with per-client physics, stepped as gymnasium vector envs.

A federated RL client is "an environment with its own dynamics": the same task (balance the pole, swing up the
pendulum) under different physical parameters, the RL analogue of non-IID data. We do not re-write physics:
each client's environments are gymnasium's own classic-control classes, and its dynamics are applied by setting
the physical attributes those classes read in ``step`` (:data:`PHYSICS`), after construction. Derived quantities
that gymnasium caches in ``__init__`` (CartPole's ``total_mass`` and ``polemass_length``) are recomputed.

Within a client, ``num_envs`` copies run as a :class:`gymnasium.vector.SyncVectorEnv` in ``SAME_STEP`` autoreset
mode, so the step that ends an episode also reports its true final observation (``info["final_obs"]``), which
the rollout needs to bootstrap time-limit truncations. (gymnasium's batched ``CartPoleVectorEnv`` steps 8
copies in ~130 us vs ~180 us here, but only supports ``NEXT_STEP`` autoreset and only CartPole; the policy
forward pass dominates either way, see benchmarks/RESULTS-rl.md.)

    >>> venv = make_vector_env("CartPole-v1", 4, {"length": 1.0, "masspole": 0.3})
    >>> venv.envs[0].unwrapped.polemass_length
    0.3
"""

from __future__ import annotations

from collections.abc import Mapping

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

# The physical attributes each environment reads in step(), with gymnasium's default value. Only these may be
# set per client: anything else (rendering constants, observation bounds) would silently do nothing.
PHYSICS: dict[str, dict[str, float]] = {
    "CartPole-v1": {"gravity": 9.8, "masscart": 1.0, "masspole": 0.1, "length": 0.5, "force_mag": 10.0, "tau": 0.02},
    "CartPole-v0": {"gravity": 9.8, "masscart": 1.0, "masspole": 0.1, "length": 0.5, "force_mag": 10.0, "tau": 0.02},
    # Acrobot's gravity is a literal in _dsdt and LINK_LENGTH_2 is only used for rendering: neither is settable.
    "Acrobot-v1": {"LINK_LENGTH_1": 1.0, "LINK_MASS_1": 1.0, "LINK_MASS_2": 1.0, "LINK_COM_POS_1": 0.5,
                   "LINK_COM_POS_2": 0.5, "LINK_MOI": 1.0, "dt": 0.2},
    "Pendulum-v1": {"g": 10.0, "m": 1.0, "l": 1.0, "dt": 0.05},
    "MountainCar-v0": {"force": 0.001, "gravity": 0.0025},
    "MountainCarContinuous-v0": {"power": 0.0015},
}

# Example per-client distributions (uniform ranges) used when a config gives none.
DEFAULT_DYNAMICS: dict[str, dict[str, tuple[float, float]]] = {
    "CartPole-v1": {"length": (0.25, 1.25), "masspole": (0.05, 0.5), "gravity": (7.0, 12.0)},
    "CartPole-v0": {"length": (0.25, 1.25), "masspole": (0.05, 0.5), "gravity": (7.0, 12.0)},
    "Acrobot-v1": {"LINK_LENGTH_1": (0.7, 1.3), "LINK_MASS_1": (0.7, 1.3), "LINK_MASS_2": (0.7, 1.3)},
    "Pendulum-v1": {"g": (8.0, 12.0), "m": (0.8, 1.2), "l": (0.8, 1.2)},
    "MountainCar-v0": {"force": (0.0008, 0.0012), "gravity": (0.002, 0.003)},
    "MountainCarContinuous-v0": {"power": (0.0012, 0.0018)},
}


def check_dynamics(env_id: str, names: Mapping[str, object] | list[str]) -> None:
    """Raise ``ValueError`` naming the allowed attributes if ``env_id`` or an attribute is not supported."""
    if env_id not in PHYSICS:
        raise ValueError(f"environment {env_id!r} has no per-client physics table; allowed: {', '.join(PHYSICS)}")
    bad = [n for n in names if n not in PHYSICS[env_id]]
    if bad:
        raise ValueError(f"{env_id}: unknown physical attribute(s) {', '.join(map(repr, bad))}; "
                         f"allowed: {', '.join(PHYSICS[env_id])}")


def set_dynamics(env: gym.Env, dynamics: Mapping[str, float]) -> None:
    """Set the physical attributes of one (possibly wrapped) classic-control env in place."""
    assert env.spec is not None
    check_dynamics(env.spec.id, dynamics)
    u = env.unwrapped
    for name, value in dynamics.items():
        setattr(u, name, float(value))
    if env.spec.id.startswith("CartPole"):  # cached in CartPoleEnv.__init__ from masspole/masscart/length
        u.total_mass = u.masspole + u.masscart
        u.polemass_length = u.masspole * u.length


def get_dynamics(env: gym.Env) -> dict[str, float]:
    """The physical attributes of ``env`` as currently set (for tests and records)."""
    assert env.spec is not None
    return {n: float(getattr(env.unwrapped, n)) for n in PHYSICS[env.spec.id]}


def sample_dynamics(ranges: Mapping[str, tuple[float, float]], rng: np.random.Generator) -> dict[str, float]:
    """One client's physics: each attribute drawn uniformly from its [low, high] range (sorted by name, so the
    draw does not depend on the mapping's order)."""
    return {n: float(rng.uniform(lo, hi)) for n, (lo, hi) in sorted(ranges.items())}


def make_env(env_id: str, dynamics: Mapping[str, float] | None = None) -> gym.Env:
    env = gym.make(env_id, disable_env_checker=True)
    if dynamics:
        set_dynamics(env, dynamics)
    return env


def make_vector_env(env_id: str, num_envs: int, dynamics: Mapping[str, float] | None = None) -> SyncVectorEnv:
    """``num_envs`` copies of ``env_id`` with the same physics, stepped together (SAME_STEP autoreset)."""
    if dynamics:
        check_dynamics(env_id, dynamics)
    dyn = dict(dynamics or {})
    return SyncVectorEnv([lambda: make_env(env_id, dyn) for _ in range(num_envs)],
                         autoreset_mode=AutoresetMode.SAME_STEP)


def make_mixed_vector_env(env_id: str, dynamics: list[Mapping[str, float]]) -> SyncVectorEnv:
    """One copy per entry of ``dynamics``, each with its own physics (evaluating many clients' environments
    in one batched policy forward pass)."""
    for d in dynamics:
        check_dynamics(env_id, d)
    return SyncVectorEnv([lambda d=dict(d): make_env(env_id, d) for d in dynamics],
                         autoreset_mode=AutoresetMode.SAME_STEP)


def space_info(env_id: str) -> tuple[int, str, int]:
    """(observation size, "categorical" | "gaussian", number of actions or action dimension) of ``env_id``."""
    env = gym.make(env_id, disable_env_checker=True)
    try:
        obs_dim = int(np.prod(env.observation_space.shape))
        a = env.action_space
        if isinstance(a, gym.spaces.Discrete):
            return obs_dim, "categorical", int(a.n)
        if isinstance(a, gym.spaces.Box):
            return obs_dim, "gaussian", int(np.prod(a.shape))
        raise ValueError(f"{env_id}: unsupported action space {a}")
    finally:
        env.close()

"""Federated RL "data": a population of clients that are environments with their own physics.

``data.dataset`` names an environment family registered in :data:`fedloom.registry.ENVIRONMENTS`
(``cartpole``, ``acrobot``, ``pendulum``, ``mountain_car``, ``mountain_car_continuous``) with the per-client
physics distribution ``dynamics: {attribute: [low, high]}`` (uniform; defaults in
:data:`fedloom.rl.envs.DEFAULT_DYNAMICS`) and held-out physics no client trains on. The algorithms that use
them are ``fedppo`` / ``fedtrpo`` (:mod:`fedloom.algorithms.fedrl`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fedloom.registry import ENVIRONMENTS
from fedloom.rl.envs import DEFAULT_DYNAMICS, PHYSICS, make_vector_env, sample_dynamics, space_info
from fedloom.rng import derive_seed


# -- the environment "data" ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvSource:
    """What the simulation reads off ``data.source`` to build the model: observation shape and number of actions
    (categorical) or action dimension (gaussian)."""

    env_id: str
    input_shape: tuple[int, ...]
    num_classes: int
    distribution: str


@dataclass
class ClientEnvironments:
    """A federated RL population: client k runs ``env_id`` with physics ``dynamics[k]``; ``heldout`` are physics
    no client trains on (generalization to unseen dynamics is the point of federating)."""

    env_id: str
    dynamics: list[dict[str, float]]
    heldout: list[dict[str, float]]
    source: EnvSource = field(init=False)
    _envs: dict[tuple[int, int], Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        obs_dim, kind, n = space_info(self.env_id)
        self.source = EnvSource(self.env_id, (obs_dim,), n, kind)

    @property
    def num_clients(self) -> int:
        return len(self.dynamics)

    @property
    def client_sizes(self) -> torch.Tensor:
        """One environment per client: equal sizes (uniform sampling under ``system.sampling: weighted``)."""
        return torch.ones(self.num_clients, dtype=torch.int64)

    @property
    def client_indices(self):
        raise ValueError(f"data.dataset: {self.env_id} is an RL environment, not labelled data; use algorithm "
                         "fedppo or fedtrpo")

    def vector_env(self, k: int, num_envs: int):
        """Client k's ``num_envs`` environments (built once, reset by their user)."""
        key = (k, num_envs)
        if key not in self._envs:
            self._envs[key] = make_vector_env(self.env_id, num_envs, self.dynamics[k])
        return self._envs[key]


class EnvironmentParams(BaseModel):
    """Per-client physics of a classic-control environment family."""

    model_config = ConfigDict(extra="forbid")
    env_id: ClassVar[str]
    version: str | None = Field(None, description="gymnasium id override, e.g. CartPole-v0")
    dynamics: dict[str, tuple[float, float]] | None = Field(
        None, description="client physics: attribute -> [low, high], drawn uniformly per client (null: defaults)")
    heldout_clients: int = Field(4, ge=0, description="held-out physics draws that no client trains on")
    heldout_dynamics: dict[str, tuple[float, float]] | None = Field(
        None, description="distribution of the held-out physics (null: the clients' distribution)")

    @field_validator("version")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        family = [e for e in PHYSICS if e.split("-")[0] == cls.env_id.split("-")[0]]
        if v is not None and v not in family:
            raise ValueError(f"{v!r} is not a version of {cls.env_id}; allowed: {', '.join(family)}")
        return v

    @field_validator("dynamics", "heldout_dynamics")
    @classmethod
    def _ranges(cls, ranges: dict[str, tuple[float, float]] | None, info: ValidationInfo):
        env_id = info.data.get("version") or cls.env_id
        bad = [n for n in ranges or {} if n not in PHYSICS[env_id]]
        if bad:
            raise ValueError(f"unknown physical attribute(s) {', '.join(map(repr, bad))} of {env_id}; "
                             f"allowed: {', '.join(PHYSICS[env_id])}")
        for n, (lo, hi) in (ranges or {}).items():
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"{n}: need a finite range low <= high, got [{lo}, {hi}]")
        return ranges


def build_environments(env_id: str, p: EnvironmentParams, num_clients: int, seed: int) -> ClientEnvironments:
    """Draw every client's physics and the held-out physics from their distributions (seeded)."""
    ranges = p.dynamics if p.dynamics is not None else DEFAULT_DYNAMICS[env_id]
    held_ranges = p.heldout_dynamics if p.heldout_dynamics is not None else ranges
    rng = np.random.default_rng(derive_seed(seed, "rl-dynamics"))
    rng_h = np.random.default_rng(derive_seed(seed, "rl-heldout-dynamics"))
    return ClientEnvironments(env_id, [sample_dynamics(ranges, rng) for _ in range(num_clients)],
                              [sample_dynamics(held_ranges, rng_h) for _ in range(p.heldout_clients)])


def _register(name: str, env_id: str) -> None:
    params = type(f"{env_id.split('-')[0]}Params", (EnvironmentParams,), {"env_id": env_id, "__module__": __name__})

    def factory(p: EnvironmentParams, num_clients: int, seed: int) -> ClientEnvironments:
        return build_environments(p.version or env_id, p, num_clients, seed)

    ENVIRONMENTS.register(name, params, f"gymnasium {env_id}, per-client physics ({', '.join(PHYSICS[env_id])})")(
        factory)


for _name, _env in [("cartpole", "CartPole-v1"), ("acrobot", "Acrobot-v1"), ("pendulum", "Pendulum-v1"),
                    ("mountain_car", "MountainCar-v0"), ("mountain_car_continuous", "MountainCarContinuous-v0")]:
    _register(_name, _env)



"""Reinforcement learning for federated clients: PPO and TRPO (Schulman et al. 2017, 2015) on gymnasium
classic-control environments with per-client physics.

* :mod:`fedloom.rl.envs`      per-client dynamics and vector envs
* :mod:`fedloom.rl.policies`  categorical / diagonal-Gaussian actor-critic (registered as model ``actor_critic``)
* :mod:`fedloom.rl.gae`       truncated GAE(gamma, lambda)
* :mod:`fedloom.rl.rollout`   experience collection and evaluation
* :mod:`fedloom.rl.ppo`       PPO (clipped / KL-penalty / unclipped surrogates)
* :mod:`fedloom.rl.trpo`      TRPO (conjugate gradient, Fisher-vector products, line search under KL <= delta)
* :mod:`fedloom.rl.environments` the federated environment families (``cartpole``, ...): clients with their own physics

The federated algorithms ``fedppo`` / ``fedtrpo`` live in :mod:`fedloom.algorithms.fedrl`.
"""

from fedloom.rl import environments  # noqa: F401  (registration: cartpole, acrobot, ...)
from fedloom.rl.envs import make_vector_env, set_dynamics
from fedloom.rl.gae import gae
from fedloom.rl.policies import ActorCritic
from fedloom.rl.ppo import PPO, PPOConfig
from fedloom.rl.rollout import Rollout, RolloutCollector, evaluate_policy

__all__ = [
           "PPO",
           "ActorCritic",
           "PPOConfig",
           "Rollout",
           "RolloutCollector",
           "evaluate_policy",
           "gae",
           "make_vector_env",
           "set_dynamics",
]

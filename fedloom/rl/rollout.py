"""Experience collection: N parallel actors each run pi_old for T steps (PPO Algorithm 1, line 1-2;
TRPO's "single path" sampling).

:class:`RolloutCollector` keeps the vector env and its current observations between segments, so episodes run
on across updates. Each step stores (s_t, a_t, log pi_old(a_t|s_t), V(s_t), r_t) and V(s_{t+1}) for the
observation that followed, which is the true final observation when the episode ended at t; then
:func:`fedloom.rl.gae.gae` turns the segment into advantages. Continuous actions are sampled from the
unbounded Gaussian and clipped to the action space only when sent to the environment (the log-probability is
that of the unclipped sample).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedloom.rl.gae import gae
from fedloom.rl.policies import ActorCritic

if TYPE_CHECKING:  # gymnasium is imported by the environments that need it, not by the library
    from gymnasium.vector import VectorEnv


@dataclass
class Rollout:
    """A [T, N] segment; ``advantages``/``returns`` are filled by :meth:`compute_advantages`."""

    obs: torch.Tensor          # [T, N, obs_dim]
    actions: torch.Tensor      # [T, N] (categorical) or [T, N, act_dim] (gaussian)
    log_probs: torch.Tensor    # log pi_old(a_t|s_t)
    values: torch.Tensor       # V(s_t) under the value function that collected the segment
    rewards: torch.Tensor      # r_t, already multiplied by the collector's reward_scale
    next_values: torch.Tensor  # V(s_{t+1}) (final observation of an ended episode)
    terminated: torch.Tensor   # bool
    ended: torch.Tensor        # bool: terminated or truncated
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        return self.values.numel()

    def compute_advantages(self, gamma: float, lam: float) -> Rollout:
        self.advantages, self.returns = gae(self.rewards, self.values, self.next_values, self.terminated,
                                            self.ended, gamma, lam)
        return self

    def flat(self) -> dict[str, torch.Tensor]:
        """Every per-step field with the [T, N] axes merged (for minibatching)."""
        n = self.num_steps
        return {f.name: getattr(self, f.name).reshape(n, *getattr(self, f.name).shape[2:])
                for f in fields(self) if getattr(self, f.name) is not None}


class RolloutCollector:
    """Steps a vector env with a policy and records segments of ``n_steps`` steps per environment."""

    def __init__(self, venv: VectorEnv, n_steps: int, seed: int, reward_scale: float = 1.0):
        self.venv = venv
        self.n_steps = n_steps
        self.reward_scale = reward_scale
        obs, _ = venv.reset(seed=seed)
        self.obs = torch.as_tensor(obs, dtype=torch.float32)
        self.space = venv.single_action_space
        self.continuous = hasattr(self.space, "low")
        n = venv.num_envs
        self._ep_return = np.zeros(n)
        self._ep_len = np.zeros(n, dtype=np.int64)
        self.episode_returns: list[float] = []  # unscaled returns of episodes finished so far
        self.episode_lengths: list[int] = []
        self.steps = 0

    def _env_action(self, a: torch.Tensor) -> np.ndarray:
        a = a.numpy()
        return np.clip(a, self.space.low, self.space.high) if self.continuous else a

    @torch.no_grad()
    def collect(self, policy: ActorCritic) -> Rollout:
        T, N = self.n_steps, self.venv.num_envs
        obs = torch.empty(T, N, *self.obs.shape[1:])
        rewards, values, log_probs = torch.empty(T, N), torch.empty(T + 1, N), torch.empty(T, N)
        terminated = torch.zeros(T, N, dtype=torch.bool)
        ended = torch.zeros(T, N, dtype=torch.bool)
        actions = []
        patches: list[tuple[int, np.ndarray, torch.Tensor]] = []  # V(s_final) of truncated episodes
        for t in range(T):
            a, log_probs[t], values[t] = policy.sample(self.obs)
            obs[t] = self.obs
            actions.append(a)
            o, r, term, trunc, info = self.venv.step(self._env_action(a))
            rewards[t] = torch.as_tensor(r, dtype=torch.float32) * self.reward_scale
            self.obs = torch.as_tensor(o, dtype=torch.float32)
            self._ep_return += r
            self._ep_len += 1
            done = term | trunc
            if done.any():  # SAME_STEP autoreset: o holds the reset observation, the final one is in info
                terminated[t], ended[t] = torch.as_tensor(term), torch.as_tensor(done)
                cut = np.flatnonzero(trunc & ~term)
                if len(cut):
                    final = torch.as_tensor(np.stack(info["final_obs"][cut]), dtype=torch.float32)
                    patches.append((t, cut, policy.value(final)))
                for i in np.flatnonzero(done):
                    self.episode_returns.append(float(self._ep_return[i]))
                    self.episode_lengths.append(int(self._ep_len[i]))
                self._ep_return[done], self._ep_len[done] = 0.0, 0
        values[T] = policy.value(self.obs)  # V(s_T): the bootstrap of the truncated segment
        next_values = values[1:].clone()
        for t, cut, v in patches:
            next_values[t, cut] = v
        next_values[terminated] = 0.0
        self.steps += T * N
        return Rollout(obs, torch.stack(actions), log_probs, values[:T].clone(), rewards, next_values,
                       terminated, ended)


@torch.no_grad()
def evaluate_policy(policy: ActorCritic, venv: VectorEnv, seed: int, deterministic: bool = True) -> np.ndarray:
    """The undiscounted return of one episode in each of the vector env's copies (so ``num_envs`` episodes,
    run side by side); ``deterministic`` acts with the mode of pi (argmax / Gaussian mean)."""
    o, _ = venv.reset(seed=seed)
    space = venv.single_action_space
    continuous = hasattr(space, "low")
    n = venv.num_envs
    returns = np.zeros(n)
    running = np.ones(n, dtype=bool)
    while running.any():
        a = policy.act(torch.as_tensor(o, dtype=torch.float32), deterministic).numpy()
        o, r, term, trunc, _ = venv.step(np.clip(a, space.low, space.high) if continuous else a)
        returns += np.where(running, r, 0.0)
        running &= ~(term | trunc)
    return returns

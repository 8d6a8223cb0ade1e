"""Truncated generalized advantage estimation (Schulman et al. 2016; PPO paper eqs. 11-12).

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + (gamma * lambda) delta_{t+1} + ... + (gamma * lambda)^{T-t-1} delta_{T-1}

computed backwards as A_t = delta_t + gamma * lambda * A_{t+1}, one step for all parallel environments at once.
Episode boundaries inside the T-step segment are handled with two masks:

* ``terminated[t]``: s_{t+1} is terminal, so V(s_{t+1}) = 0 (no bootstrap);
* ``ended[t]`` (terminated or truncated by a time limit): the sum stops at t. After a truncation the segment
  bootstraps from the value of the real final observation, ``next_values[t] = V(s_final)``.

The last step of the segment bootstraps from ``next_values[T-1] = V(s_T)`` ("truncated" GAE).
"""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        ended: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages A_t and value targets A_t + V(s_t) for a [T, N] segment of N parallel environments.

    ``next_values[t]`` is V(s_{t+1}) of the observation that followed step t (the episode's final observation
    where it ended). ``terminated`` and ``ended`` are bool [T, N].

        >>> r = torch.ones(3, 1); v = torch.zeros(3, 1); f = torch.zeros(3, 1, dtype=torch.bool)
        >>> gae(r, v, v, f, f, 0.5, 1.0)[0].squeeze(1)
        tensor([1.7500, 1.5000, 1.0000])
    """
    not_term = (~terminated).to(values.dtype)
    not_end = (~ended).to(values.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * not_end[t] * running
        adv[t] = running
    return adv, adv + values

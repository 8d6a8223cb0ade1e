"""Fast GAE == the definition A_t = sum_l (gamma lambda)^l delta_{t+l}, written as a plain loop."""

import numpy as np
import pytest
import torch

from fedloom.rl.gae import gae


def gae_by_definition(rewards, values, next_values, terminated, ended, gamma, lam):
    """Per environment and per step: sum the discounted TD residuals forward until the episode or segment ends."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for i in range(N):
        for t in range(T):
            total, weight = 0.0, 1.0
            for u in range(t, T):
                bootstrap = 0.0 if terminated[u, i] else next_values[u, i]
                delta = rewards[u, i] + gamma * bootstrap - values[u, i]
                total += weight * delta
                if ended[u, i]:
                    break
                weight *= gamma * lam
            adv[t, i] = total
    return adv


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.98, 0.0), (1.0, 0.8)])
def test_gae_equals_plain_loop(gamma, lam):
    rng = np.random.default_rng(0)
    T, N = 37, 5
    rewards = rng.normal(size=(T, N))
    values = rng.normal(size=(T, N))
    next_values = rng.normal(size=(T, N))
    terminated = rng.random((T, N)) < 0.08
    truncated = (rng.random((T, N)) < 0.05) & ~terminated
    ended = terminated | truncated
    expected = gae_by_definition(rewards, values, next_values, terminated, ended, gamma, lam)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float64)
    adv, ret = gae(as_t(rewards), as_t(values), as_t(next_values), torch.as_tensor(terminated),
                   torch.as_tensor(ended), gamma, lam)
    assert ended.any() and terminated.any() and truncated.any()
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), expected + values, rtol=1e-10, atol=1e-10)


def test_lambda_one_no_ends_is_discounted_return_minus_value():
    """With lambda = 1 and no episode end, A_t + V(s_t) is the discounted return bootstrapped by V(s_T)."""
    T = 6
    r = torch.arange(1.0, T + 1).unsqueeze(1)
    v = torch.linspace(-1.0, 1.0, T).unsqueeze(1)
    nv = torch.cat([v[1:], torch.tensor([[2.0]])])  # V(s_{t+1}); V(s_T) = 2 bootstraps the segment
    f = torch.zeros(T, 1, dtype=torch.bool)
    _, ret = gae(r, v, nv, f, f, 0.9, 1.0)
    expected = [sum(0.9 ** (u - t) * float(r[u]) for u in range(t, T)) + 0.9 ** (T - t) * 2.0 for t in range(T)]
    np.testing.assert_allclose(ret.squeeze(1).numpy(), expected, rtol=1e-6)

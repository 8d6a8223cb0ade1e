"""CI-sized learning runs: PPO and TRPO improve CartPole's return over the initial policy."""

import numpy as np
import pytest

from fedloom.rl.envs import make_vector_env
from fedloom.rl.ppo import PPO, PPOConfig
from fedloom.rl.rollout import evaluate_policy
from fedloom.rl.trpo import TRPO, TRPOConfig


def learner(kind):
    if kind == "ppo":  # rl-baselines3-zoo's CartPole settings, fewer epochs
        cfg = PPOConfig(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=10, lr=1e-3)
        return PPO(make_vector_env("CartPole-v1", 8), cfg, seed=0)
    return TRPO(make_vector_env("CartPole-v1", 2), TRPOConfig(n_envs=2, n_steps=512, vf_iters=5), seed=0)


@pytest.mark.parametrize("kind", ["ppo", "trpo"])
def test_short_cartpole_run_improves_the_return(kind):
    lrn = learner(kind)
    eval_env = make_vector_env("CartPole-v1", 20)
    # the stochastic policy (deterministic argmax of a near-uniform policy can balance the pole by luck)
    before = evaluate_policy(lrn.policy, eval_env, seed=123, deterministic=False).mean()
    out = lrn.learn(8192)
    after = evaluate_policy(lrn.policy, eval_env, seed=123, deterministic=False).mean()
    assert out["steps"] == 8192
    episodes = lrn.collector.episode_returns
    first, last = np.mean(episodes[:20]), np.mean(episodes[-20:])
    assert before < 40 and first < 40  # a random-ish policy: ~20 steps
    assert after > 100 and after > 4 * before
    assert last > 100 and last > 4 * first

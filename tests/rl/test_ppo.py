"""PPO's clipped surrogate (eq. 7): its gradient vanishes exactly where clipping is active; config errors."""

import pytest
import torch
from pydantic import ValidationError

from fedloom.rl.envs import make_vector_env
from fedloom.rl.policies import ActorCritic
from fedloom.rl.ppo import PPO, PPOConfig, adapt_beta, clipped_surrogate
from fedloom.rl.rollout import RolloutCollector

EPS = 0.2


def test_clipped_surrogate_gradient_by_region():
    # r_t in and outside [1 - eps, 1 + eps] with both signs of A_t
    r = torch.tensor([0.5, 0.5, 0.95, 1.1, 1.5, 1.5], requires_grad=True)
    A = torch.tensor([-1.0, 2.0, -3.0, 0.7, 1.3, -0.4])
    clipped_surrogate(r, A, EPS).backward()
    n = len(r)
    # clipped (flat) when r < 1-eps with A < 0, or r > 1+eps with A > 0; otherwise d/dr = A/n
    expected = torch.tensor([0.0, 2.0 / n, -3.0 / n, 0.7 / n, 0.0, -0.4 / n])
    torch.testing.assert_close(r.grad, expected)


def test_clipped_surrogate_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    r = (0.6 + 0.8 * torch.rand(40, generator=g, dtype=torch.float64)).requires_grad_(True)
    A = torch.randn(40, generator=g, dtype=torch.float64)
    # keep away from the kinks at 1 +- eps where the derivative is undefined
    r.data[((r.data - (1 + EPS)).abs() < 1e-3) | ((r.data - (1 - EPS)).abs() < 1e-3)] += 0.01
    clipped_surrogate(r, A, EPS).backward()
    h = 1e-6
    for i in range(len(r)):
        rp, rm = r.detach().clone(), r.detach().clone()
        rp[i] += h
        rm[i] -= h
        fd = (clipped_surrogate(rp, A, EPS) - clipped_surrogate(rm, A, EPS)) / (2 * h)
        assert float(r.grad[i]) == pytest.approx(float(fd), abs=1e-7)
        clipped = (r[i] > 1 + EPS and A[i] > 0) or (r[i] < 1 - EPS and A[i] < 0)
        assert (float(r.grad[i]) == 0.0) == bool(clipped)


@pytest.mark.parametrize("kind,num_actions", [("categorical", 3), ("gaussian", 2)])
def test_policy_gradient_is_zero_when_every_sample_is_clipped(kind, num_actions):
    torch.manual_seed(0)
    pi = ActorCritic(5, kind, num_actions, (16,))
    obs = torch.randn(64, 5)
    with torch.no_grad():
        dist = pi.distribution(obs)
        actions = dist.sample()
        logp = dist.log_prob(actions)

    def grads(old_log_probs, A):
        pi.zero_grad()
        ratio = torch.exp(pi.distribution(obs).log_prob(actions) - old_log_probs)
        clipped_surrogate(ratio, A, EPS).backward()
        return torch.cat([p.grad.reshape(-1) for p in pi.policy_parameters()])

    A = torch.rand(64) + 0.1
    # r_t = 1.5 > 1 + eps with A_t > 0: the objective is flat in theta
    assert torch.count_nonzero(grads(logp - torch.log(torch.tensor(1.5)), A)) == 0
    # r_t = 0.5 < 1 - eps with A_t < 0: flat as well
    assert torch.count_nonzero(grads(logp - torch.log(torch.tensor(0.5)), -A)) == 0
    # inside the range the policy gradient is the unclipped one, E[r grad log pi A]
    g_in = grads(logp, A)
    assert g_in.norm() > 1e-3
    pi.zero_grad()
    (torch.exp(pi.distribution(obs).log_prob(actions) - logp) * A).mean().backward()
    torch.testing.assert_close(g_in, torch.cat([p.grad.reshape(-1) for p in pi.policy_parameters()]))


def test_adaptive_kl_coefficient_rule():
    assert adapt_beta(1.0, 0.001, 0.01) == 0.5  # d < d_targ / 1.5
    assert adapt_beta(1.0, 0.02, 0.01) == 2.0   # d > 1.5 d_targ
    assert adapt_beta(1.0, 0.01, 0.01) == 1.0


@pytest.mark.parametrize("objective", ["clip", "kl_penalty", "none"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_update_improves_the_surrogate_on_its_segment(objective, env_id):
    cfg = PPOConfig(n_envs=2, n_steps=128, batch_size=64, n_epochs=4, lr=1e-3, objective=objective)
    learner = PPO(make_vector_env(env_id, 2), cfg, seed=1, hidden=(32,))
    rollout = learner.collector.collect(learner.policy).compute_advantages(cfg.gamma, cfg.gae_lambda)
    b = rollout.flat()
    A = (b["advantages"] - b["advantages"].mean()) / b["advantages"].std()

    def surrogate():
        with torch.no_grad():
            return float((torch.exp(learner.policy.distribution(b["obs"]).log_prob(b["actions"]) - b["log_probs"])
                          * A).mean())

    assert surrogate() == pytest.approx(0.0, abs=1e-5)  # r_t = 1 before the update
    stats = learner.update(rollout)
    assert surrogate() > 0.0
    assert stats["kl"] > 0.0
    if objective == "kl_penalty":
        assert stats["beta"] in (0.5, 1.0, 2.0)


def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="batch_size"):
        PPOConfig(n_envs=2, n_steps=8, batch_size=64)
    with pytest.raises(ValidationError, match="objective"):
        PPOConfig(objective="trust_me")
    with pytest.raises(ValidationError, match="clip_eps"):
        PPOConfig(clip_eps=-0.1)
    with pytest.raises(ValueError, match="n_envs"):
        PPO(make_vector_env("CartPole-v1", 3), PPOConfig(n_envs=2, n_steps=8, batch_size=8))


def test_rollout_bootstraps_truncated_episodes_from_their_final_observation():
    """CartPole with a 5-step time limit: V(s_final) of the truncated episode, not V(reset obs), is the bootstrap."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    venv = SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=5)], autoreset_mode=AutoresetMode.SAME_STEP)
    torch.manual_seed(0)
    pi = ActorCritic(4, "categorical", 2, (8,))
    with torch.no_grad():  # a value function that reads x_dot, so different observations get different values
        pi.v[-1].weight.normal_()
    ro = RolloutCollector(venv, 12, seed=0).collect(pi)
    ends = torch.nonzero(ro.ended[:, 0]).flatten().tolist()
    assert ends and not ro.terminated[ends[0], 0]
    t = ends[0]
    assert float(ro.next_values[t, 0]) != pytest.approx(float(ro.values[t + 1, 0]))  # not the reset observation
    assert float(ro.next_values[t - 1, 0]) == pytest.approx(float(ro.values[t, 0]))

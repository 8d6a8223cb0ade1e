"""TRPO's solver: conjugate gradient, Fisher-vector products, and a step that respects KL <= delta."""

import pytest
import torch
from torch.distributions import kl_divergence
from torch.func import functional_call
from torch.nn.utils import parameters_to_vector

from fedloom.rl.envs import make_vector_env
from fedloom.rl.policies import ActorCritic
from fedloom.rl.trpo import (
    TRPO,
    TRPOConfig,
    conjugate_gradient,
    fisher_vector_product,
    trpo_step,
)


def random_spd(n, eigenvalues, seed):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ Q.T


def test_conjugate_gradient_solves_a_random_spd_system():
    n = 30
    A = random_spd(n, torch.linspace(0.5, 20.0, n), seed=0)
    b = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = conjugate_gradient(lambda v: A @ v, b, iters=n, residual_tol=0.0)
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-8)


def test_conjugate_gradient_converges_in_as_many_steps_as_distinct_eigenvalues():
    A = random_spd(40, [1.0] * 10 + [3.0] * 10 + [7.0] * 10 + [50.0] * 10, seed=2)
    b = torch.randn(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = torch.linalg.solve(A, b)
    assert (conjugate_gradient(lambda v: A @ v, b, iters=3) - exact).norm() > 1e-3
    torch.testing.assert_close(conjugate_gradient(lambda v: A @ v, b, iters=4), exact, rtol=1e-8, atol=1e-8)


class _Dist(torch.nn.Module):
    """forward(obs) = pi's distribution, so torch.func.functional_call can swap in the parameters."""

    def __init__(self, ac):
        super().__init__()
        self.ac = ac

    def forward(self, obs):
        return self.ac.distribution(obs)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_fisher_vector_product_is_the_hessian_of_the_mean_kl(kind):
    torch.manual_seed(0)
    pi = ActorCritic(3, kind, 2, (4,)).double()
    obs = torch.randn(20, 3, dtype=torch.float64)
    params = list(pi.policy_parameters())
    name_of = {id(p): "ac." + n for n, p in pi.named_parameters()}
    names = [name_of[id(p)] for p in params]
    theta0 = parameters_to_vector(params).detach()
    with torch.no_grad():
        old = pi.distribution(obs)
    wrap = _Dist(pi)

    def mean_kl(theta):  # KLbar(theta_old, theta) as a function of the flat policy parameters
        chunks, i = {}, 0
        for n, p in zip(names, params):
            chunks[n] = theta[i:i + p.numel()].view(p.shape)
            i += p.numel()
        return kl_divergence(old, functional_call(wrap, chunks, (obs,), strict=False)).mean()

    H = torch.autograd.functional.hessian(mean_kl, theta0)
    v = torch.randn(len(theta0), dtype=torch.float64)
    Avp = fisher_vector_product(pi, obs, old, params, damping=0.1)
    torch.testing.assert_close(Avp(v), H @ v + 0.1 * v, rtol=1e-7, atol=1e-9)
    assert torch.linalg.eigvalsh(H).min() > -1e-10  # the Fisher matrix is positive semi-definite


@pytest.mark.parametrize("env_id,max_kl", [("CartPole-v1", 0.01), ("CartPole-v1", 1e-4), ("Pendulum-v1", 0.01)])
def test_trpo_step_satisfies_the_kl_constraint_and_improves_the_surrogate(env_id, max_kl):
    cfg = TRPOConfig(n_envs=2, n_steps=256, max_kl=max_kl)
    learner = TRPO(make_vector_env(env_id, 2), cfg, seed=0, hidden=(32, 32))
    b = learner.collector.collect(learner.policy).compute_advantages(cfg.gamma, cfg.gae_lambda).flat()
    A = (b["advantages"] - b["advantages"].mean()) / b["advantages"].std()
    pi = learner.policy
    with torch.no_grad():
        old = pi.distribution(b["obs"])
        old_logp = old.log_prob(b["actions"])
    theta_old = parameters_to_vector(pi.policy_parameters()).detach().clone()
    v_old = parameters_to_vector(pi.value_parameters()).detach().clone()
    stats = trpo_step(pi, b["obs"], b["actions"], A, cfg)
    with torch.no_grad():  # recomputed independently of trpo_step's bookkeeping
        new = pi.distribution(b["obs"])
        kl = float(kl_divergence(old, new).mean())
        surrogate = float((torch.exp(new.log_prob(b["actions"]) - old_logp) * A).mean())
    assert stats["step_fraction"] > 0
    assert 0 < kl <= max_kl
    assert surrogate > 1e-6  # L(theta_old) = mean(A) = 0
    assert kl == pytest.approx(stats["kl"], rel=1e-5) and surrogate == pytest.approx(stats["surrogate"], rel=1e-5)
    assert not torch.equal(parameters_to_vector(pi.policy_parameters()), theta_old)
    torch.testing.assert_close(parameters_to_vector(pi.value_parameters()), v_old)  # the value net is fitted apart


def test_no_step_when_the_gradient_vanishes():
    cfg = TRPOConfig(n_envs=1, n_steps=64)
    learner = TRPO(make_vector_env("CartPole-v1", 1), cfg, seed=0, hidden=(8,))
    b = learner.collector.collect(learner.policy).flat()
    theta = parameters_to_vector(learner.policy.policy_parameters()).detach().clone()
    stats = trpo_step(learner.policy, b["obs"], b["actions"], torch.zeros(64), cfg)
    assert stats["step_fraction"] == 0.0
    torch.testing.assert_close(parameters_to_vector(learner.policy.policy_parameters()), theta)

"""Trust Region Policy Optimization (Schulman et al. 2015, arXiv 1502.05477), single-path sampling.

Each iteration solves the paper's practical problem (eq. 14 with importance sampling q = pi_old):

    maximize_theta  L(theta) = E_t[ pi_theta(a_t|s_t) / pi_old(a_t|s_t) * A_t ]
    subject to      KLbar(theta) = E_t[ KL(pi_old(.|s_t) || pi_theta(.|s_t)) ] <= delta

with A_t from GAE instead of Q (as in the paper's follow-up and in every public implementation). Appendix C's
solver, in :func:`trpo_step`:

1. g = grad L at theta_old; A = the Fisher information matrix, the Hessian of KLbar at theta_old, used only
   through Fisher-vector products A v = grad((grad KLbar) . v) (+ damping * v) (:func:`fisher_vector_product`);
2. s ~= A^{-1} g by ``cg_iters`` (10) iterations of conjugate gradient (:func:`conjugate_gradient`);
3. the maximal step along s under the quadratic KL model: beta = sqrt(2 delta / s^T A s), full step beta s;
4. backtracking line search: shrink the step by ``backtrack_coeff`` until L improves and KLbar <= delta
   (both evaluated exactly, not from the quadratic model); if no step qualifies, theta stays theta_old.

The value function V_phi is fitted separately after the policy step (``vf_iters`` epochs of Adam on
(V_phi(s_t) - V^targ_t)^2), as in openai/baselines' trpo_mpi, whose defaults the config follows.

    >>> from fedloom.rl.envs import make_vector_env
    >>> learner = TRPO(make_vector_env("CartPole-v1", 2), TRPOConfig(n_envs=2, n_steps=16))
    >>> learner.learn(32)["steps"]
    32
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.distributions import kl_divergence
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fedloom.rl.policies import ActorCritic
from fedloom.rl.ppo import make_policy
from fedloom.rl.rollout import Rollout, RolloutCollector

if TYPE_CHECKING:  # gymnasium is imported by the environments that need it, not by the library
    from gymnasium.vector import VectorEnv


class TRPOConfig(BaseModel):
    """TRPO hyperparameters; defaults from the paper (delta=0.01, 10 CG iterations) and openai/baselines'
    trpo_mpi (cg_damping 0.1, gamma 0.99, lambda 0.98, vf_iters 5, vf_stepsize 1e-3)."""

    model_config = ConfigDict(extra="forbid")
    n_envs: int = Field(2, ge=1, description="parallel actors")
    n_steps: int = Field(512, ge=1, description="steps per actor per iteration (baselines' timesteps_per_batch / N)")
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.98, ge=0, le=1)
    max_kl: float = Field(0.01, gt=0, description="delta: the trust-region radius on the mean KL")
    cg_iters: int = Field(10, ge=1, description="conjugate-gradient iterations")
    cg_damping: float = Field(0.1, ge=0, description="A + damping * I in the Fisher-vector products")
    backtrack_iters: int = Field(10, ge=1, description="line-search trials")
    backtrack_coeff: float = Field(0.5, gt=0, lt=1, description="step shrink factor per trial")
    vf_lr: float = Field(1e-3, gt=0, description="Adam step size of the value fit")
    vf_iters: int = Field(5, ge=1, description="epochs of the value fit per iteration")
    vf_batch_size: int = Field(64, ge=1, description="minibatch of the value fit")
    normalize_advantage: bool = Field(True, description="standardize A_t over the batch")
    reward_scale: float = Field(1.0, gt=0, description="rewards are multiplied by this before GAE")


def conjugate_gradient(Avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximately solve A x = b for symmetric positive-definite A given only x -> A x (Hestenes-Stiefel).

    Exact for an n x n system after n iterations (in exact arithmetic); TRPO runs 10.
    """
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x
    p = b.clone()  # search direction
    rr = r @ r
    for _ in range(iters):
        if rr <= residual_tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def flat_grad(y: torch.Tensor, params: list[nn.Parameter], **kw) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(y, params, **kw)])


def fisher_vector_product(policy: ActorCritic, obs: torch.Tensor, old_dist, params: list[nn.Parameter],
                          damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (A + damping I) v with A = Hessian of KLbar(theta_old, theta) at theta = theta_old (the Fisher
    matrix): two backward passes through the KL, never forming A (Appendix C.1)."""
    kl = kl_divergence(old_dist, policy.distribution(obs)).mean()
    grad_kl = flat_grad(kl, params, create_graph=True)

    def Avp(v: torch.Tensor) -> torch.Tensor:
        return flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v

    return Avp


def trpo_step(policy: ActorCritic, obs: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
              cfg: TRPOConfig) -> dict[str, float]:
    """One trust-region policy update (steps 1-4 above) on a batch; moves only the policy parameters theta."""
    params = list(policy.policy_parameters())
    with torch.no_grad():
        old_dist = policy.distribution(obs)  # pi_old, fixed
        old_log_probs = old_dist.log_prob(actions)

    def surrogate_and_kl() -> tuple[torch.Tensor, torch.Tensor]:
        dist = policy.distribution(obs)
        L = (torch.exp(dist.log_prob(actions) - old_log_probs) * advantages).mean()
        return L, kl_divergence(old_dist, dist).mean()

    L_old, _ = surrogate_and_kl()
    g = flat_grad(L_old, params)  # policy gradient at theta_old
    Avp = fisher_vector_product(policy, obs, old_dist, params, cfg.cg_damping)
    s = conjugate_gradient(Avp, g, cfg.cg_iters)  # s ~= A^-1 g
    sAs = float(s @ Avp(s))
    theta_old = parameters_to_vector(params).detach().clone()
    L_old = L_old.detach()
    stats = {"surrogate_old": float(L_old), "surrogate": float(L_old), "kl": 0.0, "step_fraction": 0.0,
             "line_search_steps": cfg.backtrack_iters}
    if not (sAs > 0 and math.isfinite(sAs)):
        return stats
    beta = math.sqrt(2.0 * cfg.max_kl / sAs)  # maximal step length under the quadratic KL model
    full_step = beta * s
    expected = float(g @ full_step)  # first-order improvement of the full step
    with torch.no_grad():
        for j in range(cfg.backtrack_iters):
            frac = cfg.backtrack_coeff ** j
            vector_to_parameters(theta_old + frac * full_step, params)
            L, kl = surrogate_and_kl()
            if float(kl) <= cfg.max_kl and float(L) > float(L_old):
                stats.update(surrogate=float(L), kl=float(kl), step_fraction=frac, line_search_steps=j + 1,
                             expected_improvement=expected * frac)
                return stats
        vector_to_parameters(theta_old, params)  # no acceptable step: keep theta_old
    return stats


def fit_value(policy: ActorCritic, optimizer: torch.optim.Optimizer, obs: torch.Tensor, returns: torch.Tensor,
              epochs: int, batch_size: int, generator: torch.Generator | None = None) -> float:
    """The separate value-function fit: minibatch Adam on (V_phi(s_t) - V^targ_t)^2. Returns the last epoch's
    mean loss."""
    n = len(obs)
    loss_sum = 0.0
    for _ in range(epochs):
        loss_sum, batches = 0.0, 0
        for mb in torch.randperm(n, generator=generator).split(batch_size):
            loss = ((policy.value(obs[mb]) - returns[mb]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, batches = loss_sum + float(loss.detach()), batches + 1
        loss_sum /= batches
    return loss_sum


class TRPO:
    """A single-agent TRPO learner on one vector env (see the module docstring)."""

    def __init__(self, venv: VectorEnv, cfg: TRPOConfig | None = None, policy: ActorCritic | None = None,
                 seed: int = 0, hidden: tuple[int, ...] = (64, 64), log_std_init: float = 0.0):
        self.cfg = cfg = cfg or TRPOConfig()
        if venv.num_envs != cfg.n_envs:
            raise ValueError(f"n_envs: config says {cfg.n_envs}, the vector env has {venv.num_envs}")
        torch.manual_seed(seed)
        self.policy = policy or make_policy(venv, hidden, log_std_init)
        self.vf_optimizer = torch.optim.Adam(list(self.policy.value_parameters()), lr=cfg.vf_lr, fused=True)
        self.collector = RolloutCollector(venv, cfg.n_steps, seed, cfg.reward_scale)
        self.generator = torch.Generator().manual_seed(seed)

    def learn(self, total_steps: int, callback: Callable[[TRPO, int], bool] | None = None) -> dict:
        cfg = self.cfg
        iters = max(1, math.ceil(total_steps / (cfg.n_envs * cfg.n_steps)))
        t0 = time.perf_counter()
        stats: dict = {}
        for _ in range(iters):
            if callback is not None and callback(self, self.collector.steps):
                break
            rollout = self.collector.collect(self.policy).compute_advantages(cfg.gamma, cfg.gae_lambda)
            stats = self.update(rollout)
        else:
            if callback is not None:
                callback(self, self.collector.steps)
        return {"steps": self.collector.steps, "seconds": time.perf_counter() - t0, **stats}

    def update(self, rollout: Rollout) -> dict[str, float]:
        """The policy step on the segment, then the value fit (on targets computed with the old V)."""
        return trpo_update(self.policy, self.vf_optimizer, rollout, self.cfg, self.generator)


def trpo_update(policy: ActorCritic, vf_optimizer: torch.optim.Optimizer, rollout: Rollout, cfg: TRPOConfig,
                generator: torch.Generator | None = None) -> dict[str, float]:
    b = rollout.flat()
    A = b["advantages"]
    if cfg.normalize_advantage and len(A) > 1:
        A = (A - A.mean()) / (A.std() + 1e-8)
    stats = trpo_step(policy, b["obs"], b["actions"], A, cfg)
    stats["value_loss"] = fit_value(policy, vf_optimizer, b["obs"], b["returns"], cfg.vf_iters, cfg.vf_batch_size,
                                    generator)
    return stats


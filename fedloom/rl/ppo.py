"""Proximal Policy Optimization (Schulman et al. 2017, arXiv 1707.06347), read top to bottom with the paper's names.

One iteration of Algorithm 1 ("PPO, Actor-Critic Style"):

1. N actors run pi_theta_old for T steps (:class:`fedloom.rl.rollout.RolloutCollector`);
2. compute advantage estimates A_1..A_T with truncated GAE(gamma, lambda) (eqs. 11-12, :mod:`fedloom.rl.gae`);
3. optimize the surrogate L wrt theta with K epochs of Adam on minibatches of size M <= NT (:func:`ppo_update`);
4. theta_old <- theta.

The surrogate is eq. (9), L^{CLIP+VF+S} = E_t[ L^CLIP_t - c1 (V_theta(s_t) - V^targ_t)^2 + c2 S[pi_theta](s_t) ],
with the policy term chosen by ``objective`` (the rows of the paper's Table 1):

* ``clip``:       L^CLIP = E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]                      (eq. 7)
* ``kl_penalty``: L^KLPEN = E_t[r_t A_t - beta KL[pi_old(.|s_t), pi_theta(.|s_t)]]                (eq. 8);
  adaptive: after the update, d = E_t[KL]; beta <- beta / 2 if d < d_targ / 1.5, beta * 2 if d > 1.5 d_targ
  (Sec. 4); fixed when ``adaptive_kl`` is false;
* ``none``:       E_t[r_t A_t], "no clipping or penalty" (eq. 6, the CPI surrogate);

where r_t(theta) = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t).

    >>> from fedloom.rl.envs import make_vector_env
    >>> learner = PPO(make_vector_env("CartPole-v1", 2), PPOConfig(n_envs=2, n_steps=8, batch_size=16, n_epochs=1))
    >>> learner.learn(16)["steps"]
    16
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn
from torch.distributions import kl_divergence

from fedloom.rl.policies import ActorCritic
from fedloom.rl.rollout import Rollout, RolloutCollector

if TYPE_CHECKING:  # gymnasium is imported by the environments that need it, not by the library
    from gymnasium.vector import VectorEnv


class PPOConfig(BaseModel):
    """PPO hyperparameters; the defaults are the paper's MuJoCo settings (Table 3) except N and T."""

    model_config = ConfigDict(extra="forbid")
    n_envs: int = Field(8, ge=1, description="N: parallel actors (copies of the environment)")
    n_steps: int = Field(256, ge=1, description="T: steps per actor per iteration (NT samples per update)")
    batch_size: int = Field(64, ge=1, description="M: minibatch size (<= NT)")
    n_epochs: int = Field(10, ge=1, description="K: epochs over the NT samples per iteration")
    lr: float = Field(3e-4, gt=0, description="Adam step size")
    anneal_lr: bool = Field(False, description="lr * alpha, alpha decreasing linearly 1 -> 0 over training")
    adam_eps: float = Field(1e-5, gt=0)
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(0.95, ge=0, le=1)
    objective: Literal["clip", "kl_penalty", "none"] = Field("clip", description="policy surrogate (Table 1 rows)")
    clip_eps: float = Field(0.2, gt=0, description="epsilon in clip(r, 1 - eps, 1 + eps)")
    anneal_clip: bool = Field(False, description="eps * alpha, as in the paper's Atari runs")
    kl_beta: float = Field(1.0, gt=0, description="initial beta of the KL penalty")
    kl_target: float = Field(0.01, gt=0, description="d_targ of the adaptive KL penalty")
    adaptive_kl: bool = Field(True, description="adapt beta towards d_targ (false: fixed beta)")
    vf_coef: float = Field(0.5, ge=0, description="c1: value-loss coefficient")
    ent_coef: float = Field(0.0, ge=0, description="c2: entropy-bonus coefficient")
    max_grad_norm: float | None = Field(0.5, gt=0, description="global gradient-norm clip (null: off)")
    normalize_advantage: bool = Field(True, description="standardize A_t within each minibatch")
    reward_scale: float = Field(1.0, gt=0, description="rewards are multiplied by this before GAE")

    @field_validator("batch_size")
    @classmethod
    def _minibatch_fits(cls, m: int, info: ValidationInfo) -> int:
        n, t = info.data.get("n_envs"), info.data.get("n_steps")
        if n is not None and t is not None and m > n * t:
            raise ValueError(f"M={m} exceeds NT={n * t} (n_envs * n_steps)")
        return m


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """L^CLIP (eq. 7), the mean over the batch. Its gradient wrt r_t is 0 wherever clipping is active
    (r_t > 1 + eps with A_t > 0, or r_t < 1 - eps with A_t < 0)."""
    return torch.min(ratio * adv, torch.clamp(ratio, 1.0 - eps, 1.0 + eps) * adv).mean()


class PPO:
    """A single-agent PPO learner on one vector env. ``policy`` defaults to a fresh :class:`ActorCritic` for the
    env's spaces; :meth:`update` alone is what a federated client runs on its own segment."""

    def __init__(self, venv: VectorEnv, cfg: PPOConfig | None = None, policy: ActorCritic | None = None,
                 seed: int = 0, hidden: tuple[int, ...] = (64, 64), log_std_init: float = 0.0):
        self.cfg = cfg = cfg or PPOConfig()
        if venv.num_envs != cfg.n_envs:
            raise ValueError(f"n_envs: config says {cfg.n_envs}, the vector env has {venv.num_envs}")
        torch.manual_seed(seed)
        self.policy = policy or make_policy(venv, hidden, log_std_init)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.collector = RolloutCollector(venv, cfg.n_steps, seed, cfg.reward_scale)
        self.generator = torch.Generator().manual_seed(seed)
        self.beta = cfg.kl_beta

    def learn(self, total_steps: int, callback: Callable[[PPO, int], bool] | None = None) -> dict:
        """Iterate Algorithm 1 until ``total_steps`` environment steps. ``callback(self, steps)`` runs before each
        iteration (and at the end); returning True stops training."""
        cfg = self.cfg
        per_iter = cfg.n_envs * cfg.n_steps
        iters = max(1, math.ceil(total_steps / per_iter))
        t0 = time.perf_counter()
        stats: dict = {}
        for i in range(iters):
            if callback is not None and callback(self, self.collector.steps):
                break
            alpha = 1.0 - i / iters  # linearly annealed 1 -> 0 (paper's Atari alpha)
            rollout = self.collector.collect(self.policy).compute_advantages(cfg.gamma, cfg.gae_lambda)
            stats = self.update(rollout, alpha)
        else:
            if callback is not None:
                callback(self, self.collector.steps)
        return {"steps": self.collector.steps, "seconds": time.perf_counter() - t0, **stats}

    def update(self, rollout: Rollout, alpha: float = 1.0) -> dict[str, float]:
        """Step 3 of Algorithm 1: K epochs of Adam on minibatches of the segment; returns diagnostics."""
        stats = ppo_update(self.policy, self.optimizer, rollout, self.cfg, alpha, self.beta, self.generator)
        if self.cfg.objective == "kl_penalty" and self.cfg.adaptive_kl:
            self.beta = adapt_beta(self.beta, stats["kl"], self.cfg.kl_target)
            stats["beta"] = self.beta
        return stats


def make_policy(venv: VectorEnv, hidden=(64, 64), log_std_init: float = 0.0) -> ActorCritic:
    obs_dim = int(np.prod(venv.single_observation_space.shape))
    a = venv.single_action_space
    if hasattr(a, "n"):
        return ActorCritic(obs_dim, "categorical", int(a.n), tuple(hidden))
    return ActorCritic(obs_dim, "gaussian", int(np.prod(a.shape)), tuple(hidden), log_std_init=log_std_init)


def adapt_beta(beta: float, d: float, d_targ: float) -> float:
    """The paper's adaptive KL coefficient (Sec. 4): halve beta if d < d_targ / 1.5, double it if d > 1.5 d_targ."""
    if d < d_targ / 1.5:
        return beta / 2.0
    if d > d_targ * 1.5:
        return beta * 2.0
    return beta


def ppo_update(policy: ActorCritic, optimizer: torch.optim.Optimizer, rollout: Rollout, cfg: PPOConfig,
               alpha: float = 1.0, beta: float = 1.0, generator: torch.Generator | None = None) -> dict[str, float]:
    """K epochs of Adam on minibatches of size M, maximizing L^{CLIP+VF+S} (eq. 9) with the chosen policy term.

    ``alpha`` in [0, 1] anneals the step size and epsilon when ``anneal_lr`` / ``anneal_clip`` are set.
    """
    b = rollout.flat()
    n = rollout.num_steps
    eps = cfg.clip_eps * (alpha if cfg.anneal_clip else 1.0)
    for g in optimizer.param_groups:
        g["lr"] = cfg.lr * (alpha if cfg.anneal_lr else 1.0)
    with torch.no_grad():
        old_dist = policy.distribution(b["obs"])  # pi_old(.|s_t): the KL penalty and the reported KL
    clipfracs, pg_losses, v_losses, entropies = [], [], [], []
    for _epoch in range(cfg.n_epochs):
        perm = torch.randperm(n, generator=generator)
        for mb in perm.split(cfg.batch_size):
            obs, actions = b["obs"][mb], b["actions"][mb]
            A = b["advantages"][mb]
            if cfg.normalize_advantage and len(mb) > 1:
                A = (A - A.mean()) / (A.std() + 1e-8)
            dist = policy.distribution(obs)
            ratio = torch.exp(dist.log_prob(actions) - b["log_probs"][mb])  # r_t(theta)
            if cfg.objective == "clip":
                L_policy = clipped_surrogate(ratio, A, eps)
            elif cfg.objective == "kl_penalty":
                old = _index_dist(old_dist, mb, policy)
                L_policy = (ratio * A).mean() - beta * kl_divergence(old, dist).mean()
            else:
                L_policy = (ratio * A).mean()
            V = policy.value(obs)
            L_vf = ((V - b["returns"][mb]) ** 2).mean()  # (V_theta(s_t) - V^targ_t)^2
            S = dist.entropy().mean()
            loss = -(L_policy - cfg.vf_coef * L_vf + cfg.ent_coef * S)  # maximize eq. (9)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                clipfracs.append(float(((ratio - 1.0).abs() > eps).float().mean()))
                pg_losses.append(float(L_policy))
                v_losses.append(float(L_vf))
                entropies.append(float(S))
    with torch.no_grad():  # d = E_t[KL[pi_old, pi_theta]] after the update (exact, over the whole segment)
        kl = float(kl_divergence(old_dist, policy.distribution(b["obs"])).mean())
        var_y = b["returns"].var()
        explained = float(1 - (b["returns"] - policy.value(b["obs"])).var() / var_y) if var_y > 0 else float("nan")
    return {"kl": kl, "clipfrac": float(np.mean(clipfracs)), "surrogate": float(np.mean(pg_losses)),
            "value_loss": float(np.mean(v_losses)), "entropy": float(np.mean(entropies)),
            "explained_variance": explained}


def _index_dist(dist, idx: torch.Tensor, policy: ActorCritic):
    """The minibatch rows of a batched distribution (categorical or diagonal Gaussian)."""
    if policy.kind == "categorical":
        return type(dist)(logits=dist.logits[idx])
    base = dist.base_dist
    return type(dist)(type(base)(base.loc[idx], base.scale[idx]), 1)


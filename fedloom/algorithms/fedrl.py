"""Federated reinforcement learning: PPO / TRPO clients in environments with their own physics.

The round is fedloom's usual loop (papers.md section 7, "federated RL mapping"):

1. the server broadcasts theta (policy) and phi (value function): the ``actor_critic`` model's parameters;
2. each sampled client k resets its own ``n_envs`` environments (physics drawn for client k when the run is
   built), collects ``n_envs * n_steps`` steps with pi_theta and runs its PPO epochs (Algorithm 1, steps 2-3) or
   one TRPO step plus the value fit, ``local_iterations`` times; it uploads the parameter change;
3. the server averages the changes weighted by timesteps (``weighting: samples``; every client's
   ``num_samples`` is its step count) and applies them with the configured server optimizer;
4. the server records KLbar(pi_prev || pi_new) over states that pi_prev visits on the server's own held-out
   environments (``policy_kl``): the trust region (TRPO's delta, PPO's clipping) is enforced only locally, on
   each client's own states, so nothing bounds the averaged policy's move by delta. ``local_kl_mean`` is the
   clients' mean KL from the broadcast policy, measured on their own rollouts (other states than the probe's).

On evaluation rounds the global policy acts deterministically for ``eval_episodes`` episodes on every client's
environment (``return_clients``, mean ``return_mean``) and on held-out dynamics that no client trains on
(``return_heldout``, mean ``return_heldout_mean``), all in one batched vector env.

Environments are registered in :data:`fedloom.registry.ENVIRONMENTS` (``cartpole``, ``acrobot``, ``pendulum``,
``mountain_car``, ``mountain_car_continuous``); a run names one as ``data.dataset`` with the per-client physics
distribution ``dynamics: {attribute: [low, high]}`` (uniform; defaults in :data:`fedloom.rl.envs.DEFAULT_DYNAMICS`; :mod:`fedloom.rl.environments`).

Every random draw is derived from (seed, round, client): the client's environment reset, its action sampling
(in a forked torch RNG) and its minibatch order, so a run is reproducible and resumes bit-identically. A client
starts fresh episodes each round (a segment's last, unfinished episode is bootstrapped with V), and a fresh
Adam state; the KL-penalty coefficient beta of PPO's adaptive variant is per-client state kept between rounds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch.distributions import kl_divergence

from fedloom.core.algorithm import AlgorithmParams, CustomClientAlgorithm, Traits
from fedloom.core.types import ClientReport
from fedloom.registry import ALGORITHMS, ENVIRONMENTS
from fedloom.rl.environments import ClientEnvironments
from fedloom.rl.policies import ActorCritic
from fedloom.rl.ppo import PPOConfig, adapt_beta, ppo_update
from fedloom.rl.rollout import Rollout, RolloutCollector, evaluate_policy
from fedloom.rl.trpo import TRPOConfig, trpo_update
from fedloom.rng import derive_seed, torch_generator


# -- the algorithm --------------------------------------------------------------------------------------------------
class _FedRLParams(AlgorithmParams):
    weighting: str = Field("samples", pattern="^(samples|uniform)$",
                           description="samples: weight each client by its timesteps; uniform: equal weights")
    local_iterations: int = Field(1, ge=1, description="collect + update cycles per client per round")
    eval_episodes: int = Field(10, ge=1, description="deterministic episodes per environment on eval rounds")
    kl_probe_steps: int = Field(1024, ge=1, description="states pi_prev visits (held-out envs) for policy_kl")


class FedPPOParams(_FedRLParams, PPOConfig):
    """Federated PPO: the PPO hyperparameters of every client plus the federated settings."""


class FedTRPOParams(_FedRLParams, TRPOConfig):
    """Federated TRPO: the TRPO hyperparameters of every client plus the federated settings."""


class FederatedRL(CustomClientAlgorithm):
    """Shared machinery of :class:`FedPPO` and :class:`FedTRPO`; subclasses supply :meth:`local_update`."""

    name = "fedrl"
    headline = "return_mean"
    traits = Traits(data="environment")  # config validation pairs it with an ENVIRONMENTS entry

    # -- setup ---------------------------------------------------------------------------------------------------
    def bind(self, ctx) -> None:
        data, model, name = ctx.data, ctx.model, self.name
        if not isinstance(data, ClientEnvironments):
            raise ValueError(f"data.dataset: algorithm {name!r} needs an RL environment "
                             f"({', '.join(ENVIRONMENTS.names())})")
        if not isinstance(model, ActorCritic):
            raise ValueError(f"model.name: algorithm {name!r} needs model 'actor_critic', got {ctx.model_name!r}")
        if model.kind != data.source.distribution:
            raise ValueError(f"model.distribution: {data.env_id} has "
                             f"{'discrete' if data.source.distribution == 'categorical' else 'continuous'} actions; "
                             f"set model.distribution={data.source.distribution}")
        self.data, self.seed, self.rounds = data, ctx.seed, ctx.rounds
        self.net = copy.deepcopy(model).cpu()   # the working policy: loaded with the broadcast / global parameters
        self.prev = copy.deepcopy(model).cpu()  # pi_prev, for the server's policy_kl
        self._eval_envs: dict[str, Any] = {}

    @staticmethod
    def load(net: ActorCritic, params: Mapping[str, torch.Tensor]) -> ActorCritic:
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(params[n])
        return net

    # -- client side ---------------------------------------------------------------------------------------------
    def local_update(self, net: ActorCritic, rollout: Rollout, state: dict, gen: torch.Generator,
                     alpha: float) -> dict[str, float]:
        """One local improvement step on a segment; ``alpha`` = 1 - (round - 1) / rounds anneals PPO's step size
        and epsilon over the run when ``anneal_lr`` / ``anneal_clip`` are set."""
        raise NotImplementedError

    def train_client(self, job: Any, k: int) -> ClientReport:
        """Client k: from the broadcast (theta, phi), collect steps in its own environments and improve."""
        p, task = self.p, job
        net = self.load(self.net, {n: v.cpu() for n, v in task.params.items()})
        venv = self.data.vector_env(k, p.n_envs)
        state = dict(task.client_states.get(k) or {})
        gen = torch_generator(task.seed, "rl-minibatches", task.round, k)
        alpha = 1.0 - (task.round - 1) / self.rounds
        with torch.random.fork_rng(devices=[]):  # action sampling: seeded per (round, client), global RNG untouched
            torch.manual_seed(derive_seed(task.seed, "rl-actions", task.round, k))
            collector = RolloutCollector(venv, p.n_steps, derive_seed(task.seed, "rl-env", task.round, k),
                                         p.reward_scale)
            kls = []
            for _ in range(p.local_iterations):
                rollout = collector.collect(net).compute_advantages(p.gamma, p.gae_lambda)
                stats = self.local_update(net, rollout, state, gen, alpha)
                kls.append(stats["kl"])
        if state:
            task.client_states[k] = state
        update = {n: q.detach().to(task.params[n].device) - task.params[n] for n, q in net.named_parameters()}
        eps = collector.episode_returns
        meta = {"round": task.round, "local_kl": float(np.mean(kls)), "episodes": len(eps),
                "episode_return": float(np.mean(eps)) if eps else None}
        return ClientReport(k, update, collector.steps, float(stats["value_loss"]), meta)

    # -- server side ---------------------------------------------------------------------------------------------
    def check_report(self, report: ClientReport) -> None:
        kl = report.meta.get("local_kl")
        if isinstance(kl, bool) or not isinstance(kl, (int, float)):
            raise ValueError(f"meta 'local_kl' must be a number, got {kl!r}")

    def max_samples(self, ctx, k):
        """A client's weight is its timestep count: n_envs * n_steps per collection, local_iterations of them."""
        return self.p.n_envs * self.p.n_steps * self.p.local_iterations

    def _probe_env(self):
        if "probe" not in self._eval_envs:
            dyn = self.data.heldout or [{}]  # the server's own environments (gymnasium defaults if none held out)
            self._eval_envs["probe"] = _vector_env(self.data.env_id, dyn)
        return self._eval_envs["probe"]

    def server_step(self, ctx, state, agg):
        """Apply the timestep-weighted mean update; record KLbar(pi_prev || pi_new) on states pi_prev visits."""
        prev = self.load(self.prev, {n: v.cpu() for n, v in state.params.items()})
        venv = self._probe_env()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "rl-kl-probe-actions", state.round))
            steps = max(1, -(-self.p.kl_probe_steps // venv.num_envs))
            probe = RolloutCollector(venv, steps, derive_seed(self.seed, "rl-kl-probe", state.round)).collect(prev)
        obs = probe.obs.reshape(-1, *probe.obs.shape[2:])
        opt_state = ctx.server_optimizer.step(state.params, agg.update, state.opt_state)
        new = self.load(self.net, {n: v.cpu() for n, v in state.params.items()})
        with torch.no_grad():
            kl = float(kl_divergence(prev.distribution(obs), new.distribution(obs)).mean())
        local = [float(r.meta["local_kl"]) for r in agg.reports if "local_kl" in r.meta]
        return replace(state, opt_state=opt_state), {"policy_kl": kl,
                                                     "local_kl_mean": float(np.mean(local)) if local else None}

    def evaluate(self, ctx, state) -> dict[str, Any]:
        """Deterministic returns of the global policy on every client's environment and on held-out physics."""
        net = self.load(self.net, {n: v.cpu() for n, v in state.params.items()})
        E = self.p.eval_episodes
        out: dict[str, Any] = {}
        for tag, dyns in (("clients", self.data.dynamics), ("heldout", self.data.heldout)):
            if not dyns:
                continue
            if tag not in self._eval_envs:
                self._eval_envs[tag] = _vector_env(self.data.env_id, [d for d in dyns for _ in range(E)])
            with torch.random.fork_rng(devices=[]):
                rets = evaluate_policy(net, self._eval_envs[tag], derive_seed(self.seed, "rl-eval", tag, state.round))
            per = rets.reshape(len(dyns), E).mean(1)
            out["return_mean" if tag == "clients" else "return_heldout_mean"] = float(per.mean())
            out[f"return_{tag}"] = [round(float(r), 2) for r in per]
        return out


def _tiny_rl(name: str, **algorithm: Any) -> dict[str, Any]:
    """A tiny cartpole run (the algorithm contract suite's config)."""
    return {"data": {"dataset": "cartpole", "num_clients": 4}, "model": {"name": "actor_critic", "hidden": [16]},
            "cohort_size": 2, "algorithm": {"name": name, "n_envs": 2, "n_steps": 16, "eval_episodes": 1,
                                            "kl_probe_steps": 8, **algorithm}}


@ALGORITHMS.register("fedppo", FedPPOParams, "federated PPO: clients run PPO epochs in their own environments; "
                     "timestep-weighted mean")
class FedPPO(FederatedRL):
    """Clients run PPO (Schulman et al. 2017, Algorithm 1) from the global actor-critic."""

    name = "fedppo"
    contract_config = _tiny_rl("fedppo", batch_size=16, n_epochs=1)

    def local_update(self, net, rollout, state, gen, alpha):
        p = self.p
        opt = torch.optim.Adam(net.parameters(), lr=p.lr, eps=p.adam_eps, fused=True)
        beta = state.get("beta", p.kl_beta)
        stats = ppo_update(net, opt, rollout, p, alpha, beta, gen)
        if p.objective == "kl_penalty" and p.adaptive_kl:
            state["beta"] = adapt_beta(beta, stats["kl"], p.kl_target)
        return stats


@ALGORITHMS.register("fedtrpo", FedTRPOParams, "federated TRPO: clients take a TRPO step (KL <= delta locally) "
                     "and fit V; timestep-weighted mean")
class FedTRPO(FederatedRL):
    """Clients take one TRPO step (Schulman et al. 2015) and fit the value function from the global model."""

    name = "fedtrpo"
    contract_config = _tiny_rl("fedtrpo")

    def local_update(self, net, rollout, state, gen, alpha):
        opt = torch.optim.Adam(list(net.value_parameters()), lr=self.p.vf_lr, fused=True)
        return trpo_update(net, opt, rollout, self.p, gen)


def _vector_env(env_id: str, dynamics: list):
    """gymnasium (~0.3 s to import) is loaded only when an RL run builds its environments."""
    from fedloom.rl.envs import make_mixed_vector_env

    return make_mixed_vector_env(env_id, dynamics)

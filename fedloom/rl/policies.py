"""Actor-critic networks: a policy pi_theta(a|s) and a separate value function V_phi(s).

No parameter sharing between the two (PPO paper, Sec. 6.1: "we don't share parameters between the policy and
value function"; TRPO fits its value function separately), so a TRPO step can move the policy parameters alone
(:meth:`ActorCritic.policy_parameters`). Policies:

* ``categorical`` -- logits over n discrete actions (CartPole, Acrobot, MountainCar);
* ``gaussian``   -- a diagonal Gaussian with state-independent log standard deviations (the PPO and TRPO
  papers' continuous-control parametrization; Pendulum, MountainCarContinuous).

Initialization follows the usual PPO practice (orthogonal weights, gain sqrt(2) in hidden layers, 0.01 on the
policy output so the initial policy is near-uniform, 1 on the value output).

    >>> net = ActorCritic(4, "categorical", 2)
    >>> net.distribution(torch.zeros(3, 4)).sample().shape
    torch.Size([3])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from fedloom.registry import MODELS

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(sizes: list[int], activation: str, out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=out_gain if last else math.sqrt(2))
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """pi_theta (``pi`` [+ ``log_std``]) and V_phi (``v``) as two MLPs over the flat observation."""

    def __init__(self, obs_dim: int, distribution: str, num_actions: int, hidden: tuple[int, ...] = (64, 64),
                 activation: str = "tanh", log_std_init: float = 0.0):
        super().__init__()
        if distribution not in ("categorical", "gaussian"):
            raise ValueError(f"distribution must be 'categorical' or 'gaussian', got {distribution!r}")
        self.kind = distribution
        self.pi = mlp([obs_dim, *hidden, num_actions], activation, 0.01)
        self.v = mlp([obs_dim, *hidden, 1], activation, 1.0)
        if distribution == "gaussian":
            self.log_std = nn.Parameter(torch.full((num_actions,), float(log_std_init)))

    def distribution(self, obs: torch.Tensor) -> Distribution:
        """pi_theta(.|s) for a batch of observations."""
        out = self.pi(obs)
        if self.kind == "categorical":
            return Categorical(logits=out, validate_args=False)
        return Independent(Normal(out, self.log_std.exp().expand_as(out), validate_args=False), 1,
                           validate_args=False)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a ~ pi(.|s), log pi(a|s), V(s)) for a batch, without building a Distribution object: the rollout's
        per-step path, where the fixed overhead of torch.distributions dominates. Same values as
        ``distribution(obs).log_prob(a)`` (tested)."""
        out = self.pi(obs)
        if self.kind == "categorical":
            logp_all = torch.log_softmax(out, -1)
            a = torch.multinomial(logp_all.exp(), 1)
            return a.squeeze(-1), logp_all.gather(-1, a).squeeze(-1), self.value(obs)
        noise = torch.randn_like(out)
        a = out + self.log_std.exp() * noise
        logp = (-0.5 * noise.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        return a, logp, self.value(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V_phi(s), shape [B]."""
        return self.v(obs).squeeze(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """An action per observation: a sample, or the mode (argmax / mean) when ``deterministic``."""
        if deterministic:
            out = self.pi(obs)
            return out.argmax(-1) if self.kind == "categorical" else out
        return self.distribution(obs).sample()

    def policy_parameters(self) -> Iterator[nn.Parameter]:
        """theta: the parameters of pi only (what a TRPO step moves)."""
        yield from self.pi.parameters()
        if self.kind == "gaussian":
            yield self.log_std

    def value_parameters(self) -> Iterator[nn.Parameter]:
        """phi: the value network's parameters."""
        yield from self.v.parameters()


class ActorCriticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    distribution: str = Field("categorical", pattern="^(categorical|gaussian)$",
                              description="policy family; must match the environment's action space")
    hidden: list[int] = Field(default_factory=lambda: [64, 64], min_length=1, description="hidden widths of both MLPs")
    activation: str = Field("tanh", pattern="^(tanh|relu)$")
    log_std_init: float = Field(0.0, description="initial log standard deviation (gaussian policies)")


@MODELS.register("actor_critic", ActorCriticParams,
                 "policy + value MLPs for RL (categorical or diagonal-Gaussian policy; no shared layers)")
def actor_critic(input_shape: tuple[int, ...], num_classes: int, p: ActorCriticParams) -> ActorCritic:
    """Model-registry entry: ``input_shape`` is the observation shape, ``num_classes`` the number of discrete
    actions (categorical) or the action dimension (gaussian)."""
    return ActorCritic(math.prod(input_shape), p.distribution, num_classes, tuple(p.hidden), p.activation,
                       p.log_std_init)

"""Server optimizers: apply the aggregated client update H to the global model.

Following Reddi et al. 2021 ("Adaptive Federated Optimization"), the mean update H acts as a pseudo-gradient
(-H). State is explicit: ``init(params) -> state`` and ``step(params, H, state) -> state`` (params updated in
place, as the round loop owns them).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.registry import SERVER_OPTIMIZERS

Params = dict[str, torch.Tensor]


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SGDParams(_P):
    lr: float = Field(1.0, gt=0, description="eta in W <- W + eta * H (1.0 = plain FedAvg)")


@SERVER_OPTIMIZERS.register("sgd", SGDParams, "W <- W + eta * H (Konecny et al.; eta=1 is FedAvg)")
class ServerSGD:
    def __init__(self, p: SGDParams):
        self.p = p

    def init(self, params: Params) -> dict:
        return {}

    def step(self, params: Params, update: Params, state: dict) -> dict:
        for k, v in update.items():
            params[k].add_(v, alpha=self.p.lr)
        return state


class MomentumParams(_P):
    lr: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False


@SERVER_OPTIMIZERS.register("momentum", MomentumParams, "FedAvgM (Hsu et al. 2019): v <- beta v + H; W <- W + eta v")
class ServerMomentum:
    def __init__(self, p: MomentumParams):
        self.p = p

    def init(self, params: Params) -> dict:
        return {"v": {k: torch.zeros_like(v) for k, v in params.items()}}

    def step(self, params: Params, update: Params, state: dict) -> dict:
        for k, h in update.items():
            v = state["v"][k]
            v.mul_(self.p.momentum).add_(h)
            params[k].add_(h.add(v, alpha=self.p.momentum) if self.p.nesterov else v, alpha=self.p.lr)
        return state


class AdamParams(_P):
    lr: float = Field(0.01, gt=0, description="server learning rate eta")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, description="adaptivity tau (Reddi et al. eps)")
    bias_correction: bool = False


@SERVER_OPTIMIZERS.register("adam", AdamParams, "FedAdam (Reddi et al. 2021): Adam on the pseudo-gradient -H")
class ServerAdam:
    """Reddi et al. 2021, Algorithm 2 (FedAdam): m = b1 m + (1-b1) H; v = b2 v + (1-b2) H^2;
    W <- W + eta m / (sqrt(v) + tau)."""

    def __init__(self, p: AdamParams):
        self.p = p

    def init(self, params: Params) -> dict:
        return {"m": {k: torch.zeros_like(v) for k, v in params.items()},
                "v": {k: torch.zeros_like(v) for k, v in params.items()}, "t": 0}

    def step(self, params: Params, update: Params, state: dict) -> dict:
        p = self.p
        t = state["t"] + 1
        c1 = 1 - p.beta1**t if p.bias_correction else 1.0
        c2 = 1 - p.beta2**t if p.bias_correction else 1.0
        for k, h in update.items():
            m, v = state["m"][k], state["v"][k]
            m.mul_(p.beta1).add_(h, alpha=1 - p.beta1)
            v.mul_(p.beta2).addcmul_(h, h, value=1 - p.beta2)
            params[k].addcdiv_(m, (v / c2).sqrt_().add_(p.tau), value=p.lr / c1)
        state["t"] = t
        return state


def build_server_optimizer(name: str, params: dict | None):
    e = SERVER_OPTIMIZERS.entry(name)
    return e.factory(e.params(**(params or {})))

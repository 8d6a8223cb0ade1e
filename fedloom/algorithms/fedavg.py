"""FedAvg (McMahan et al. 2017), FedSGD, FedProx (Li et al. 2020) and local SGD (Stich 2019).

All four are local SGD on a loss followed by a weighted mean; they differ only in schedule and objective.
The server applies W <- W + eta * H with H the mean update (Konecny et al. 2016's form; eta=1 gives FedAvg),
or a momentum / Adam server optimizer (FedAvgM, FedAdam): see :mod:`fedloom.algorithms.server_opt`.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import Field

from fedloom.core.algorithm import AlgorithmParams, LocalSGDAlgorithm
from fedloom.core.types import LocalSchedule
from fedloom.registry import ALGORITHMS


@ALGORITHMS.register("fedavg", AlgorithmParams, "FedAvg: E local epochs of minibatch SGD, sample-weighted mean")
class FedAvg(LocalSGDAlgorithm):
    """McMahan et al. 2017, Algorithm 1: clients run E epochs of SGD with batch B; the server averages the
    updates weighted by n_k / n."""


@ALGORITHMS.register("fedsgd", AlgorithmParams, "FedSGD: one full-batch gradient step per client (FedAvg with E=1, B=inf)")
class FedSGD(LocalSGDAlgorithm):
    def local_schedule(self, base: LocalSchedule, rnd: int) -> LocalSchedule:
        return replace(base, batch_size=None, local_steps=1, epochs=1, momentum=0.0)


class FedProxParams(AlgorithmParams):
    mu: float = Field(0.01, ge=0, description="proximal weight: loss + mu/2 ||w - w_global||^2")


@ALGORITHMS.register("fedprox", FedProxParams, "FedProx: local loss + mu/2 ||w - w_global||^2")
class FedProx(LocalSGDAlgorithm):
    """Li et al. 2020 (FedProx), eq. (2): h_k(w; w^t) = F_k(w) + mu/2 ||w - w^t||^2."""

    p: FedProxParams

    def loss_context(self, global_params):
        return {"global_params": global_params}

    def local_loss(self, data_loss, params, ctx):
        loss, aux = data_loss(params)
        g = ctx["global_params"]
        prox = sum(((params[k] - g[k]) ** 2).sum() for k in params)
        return loss + 0.5 * self.p.mu * prox, aux


class LocalSGDParams(AlgorithmParams):
    local_steps: int = Field(10, ge=1, description="H: local SGD steps between averagings")
    weighting: str = Field("uniform", pattern="^(samples|uniform)$")


@ALGORITHMS.register("localsgd", LocalSGDParams, "local SGD (Stich 2019): H local steps, then average")
class LocalSGD(LocalSGDAlgorithm):
    """Stich 2019, Algorithm 1: every worker runs H steps of SGD from the shared iterate; the iterates are
    averaged (uniformly by default)."""

    p: LocalSGDParams

    def local_schedule(self, base: LocalSchedule, rnd: int) -> LocalSchedule:
        return replace(base, local_steps=self.p.local_steps)

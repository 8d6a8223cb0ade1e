"""How client work executes. Engines never contain algorithm math: they run an algorithm's local
objective (or its arbitrary client code) for a cohort and return per-client outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

from fedloom.algorithms.base import Algorithm, ClientOutput, LocalSchedule, Params, client_batches
from fedloom.data.federated import FederatedData
from fedloom.rng import torch_generator


class Reparametrization(Protocol):
    """Client training in a restricted space (e.g. Konecny et al.'s structured updates, :mod:`fedloom.codecs`).

    Client k trains variables ``z`` starting from ``z0`` with per-client constants ``consts`` (both from
    :meth:`client_init`); its loss sees the model ``expand(z, consts, global_params)``, and its update is
    ``z - z0``. ``expand`` must be pure and vmap-safe: both engines call it, so they still agree.
    """

    def client_init(self, global_params: Params, client: int) -> tuple[Params, Params]: ...

    def expand(self, z: Params, consts: Params, global_params: Params) -> Params: ...


@dataclass
class CohortTask:
    """Everything client work in one round needs."""

    model: nn.Module          # architecture template (its own parameters are not used)
    params: Params            # the broadcast global model, as decoded by the clients
    buffers: Params
    clients: list[int]
    data: FederatedData
    schedule: LocalSchedule
    algorithm: Algorithm
    seed: int
    round: int
    device: torch.device
    reparam: Reparametrization | None = None  # None: train the model's parameters directly
    extras: Params = field(default_factory=dict)  # decoded Algorithm.broadcast_extras
    personal: dict[int, Params] = field(default_factory=dict)  # decoded Algorithm.client_broadcast, per client
    client_states: dict[int, Any] = field(default_factory=dict)  # persistent per-client state (checkpointed)

    def _personal_model(self, k: int) -> Params | None:
        """The whole model in client k's personalized message (parameter order), or None if it carries none."""
        mine = self.personal.get(k)
        names = [n for n, _ in self.model.named_parameters()]
        if not mine or not names or any(n not in mine for n in names):
            return None
        return {n: mine[n] for n in names}

    @property
    def per_client_start(self) -> bool:
        """True when clients start from different models (personalized broadcasts carrying the model)."""
        return any(self._personal_model(k) is not None for k in self.personal)

    def start_params(self, k: int) -> Params:
        """The model client k starts local training from."""
        mine = self._personal_model(k)
        return self.params if mine is None else mine

    def batches(self, k: int) -> list[torch.Tensor]:
        """Client k's minibatches (local indices) for this round: the same in every engine."""
        n = len(self.data.client_indices[k])
        return client_batches(n, self.schedule, torch_generator(self.seed, "batches", self.round, k))


def client_start(task: CohortTask, k: int) -> tuple[Params, Params]:
    """Client k's trainable starting point and per-client constants: (broadcast model, {}) by default, or
    the model in client k's personalized message (``Algorithm.client_broadcast``)."""
    start = task.start_params(k)
    if task.reparam is None:
        return start, {}
    return task.reparam.client_init(start, k)


def client_objective(task: CohortTask, forward, ctx):
    """The algorithm's functional loss as a function of (trainable z, per-client constants, x, y, w)."""
    alg, rp, gp = task.algorithm, task.reparam, task.params
    if rp is not None and task.per_client_start:
        raise ValueError("structured codecs (low rank / mask) expand around one shared model; they cannot be "
                         "combined with personalized per-client models")
    if rp is None:
        return lambda p, c, x, y, w: alg.client_loss(forward, p, x, y, w, ctx)
    return lambda z, c, x, y, w: alg.client_loss(forward, rp.expand(z, c, gp), x, y, w, ctx)


class Engine:
    name = "base"

    def run(self, task: CohortTask) -> list[ClientOutput]:
        raise NotImplementedError


def make_forward(model: nn.Module, buffers: Params):
    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (x,))

    return forward


def sgd_step_(params: Params, grads: Params, bufs: Params | None, sched: LocalSchedule,
              active: torch.Tensor | None = None, lr: float | None = None) -> None:
    """One SGD step in place (PyTorch's SGD semantics: buf <- mu buf + g; p <- p - lr buf).

    ``active`` (shape [C], vectorized engine) masks clients that have no batch at this step: their
    parameters and momentum buffers are left untouched. ``lr`` overrides ``sched.lr`` (a schedule's step).
    """
    lr = sched.lr if lr is None else lr
    for k, p in params.items():
        g = grads[k]
        if sched.weight_decay:
            g = g.add(p, alpha=sched.weight_decay)
        if bufs is not None:
            b = bufs[k]
            if active is None:
                b.mul_(sched.momentum).add_(g)
            else:
                a = active.view(-1, *([1] * (b.dim() - 1)))
                b.copy_(torch.where(a, b * sched.momentum + g, b))
            g = b
        if active is None:
            p.sub_(g, alpha=lr)
        else:
            p.sub_(g * active.view(-1, *([1] * (p.dim() - 1))).to(p.dtype), alpha=lr)


"""How client work executes in the simulation. Engines never contain algorithm math: they run a
:class:`~fedloom.core.algorithm.LocalSGDAlgorithm`'s local objective (or a
:class:`~fedloom.core.algorithm.CustomClientAlgorithm`'s client code) for a cohort and return one
:class:`~fedloom.core.types.ClientReport` per client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.func import functional_call

from fedloom.core.algorithm import Algorithm, CustomClientAlgorithm, LocalSGDAlgorithm
from fedloom.core.types import ClientReport, LocalSchedule, Params, Task, client_batches
from fedloom.models.tasks import Classification
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
class CohortJob:
    """Everything a cohort's client work in one round needs (what the clients received, their data, the
    round's schedule). Built by the client runtime from the decoded broadcast."""

    model: nn.Module          # architecture template (its own parameters are not used)
    params: Params            # the broadcast global model, as decoded by the clients
    buffers: Params
    clients: list[int]
    data: Any                 # the federated data (fedloom.data.base.FederatedDataset: client_size, cohort)
    schedule: LocalSchedule
    algorithm: Algorithm
    seed: int
    round: int
    device: torch.device
    task: Task | None = None  # the loss (fedloom.models.tasks); None: classification
    reparam: Reparametrization | None = None  # None: train the model's parameters directly
    extras: Params = field(default_factory=dict)  # broadcast entries that are not model parameters
    personal: dict[int, Params] = field(default_factory=dict)  # decoded personalized messages, per client
    client_states: dict[int, Any] = field(default_factory=dict)  # persistent per-client state (checkpointed)
    #: per-client optimizer states kept between rounds (``client.optimizer.persist``; checkpointed): the engine
    #: starts client k from ``optimizer_states[k]`` (fresh if absent) and stores its state after the round.
    #: None: every client's optimizer restarts each round (the default)
    optimizer_states: dict[int, Any] | None = None

    def __post_init__(self) -> None:
        if self.task is None:
            self.task = Classification()

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
        n = self.data.client_size(k)
        return client_batches(n, self.schedule, torch_generator(self.seed, "batches", self.round, k))


def client_start(task: CohortJob, k: int) -> tuple[Params, Params]:
    """Client k's trainable starting point and per-client constants: (broadcast model, {}) by default, or
    the model in client k's personalized message (``Algorithm.client_broadcast``)."""
    start = task.start_params(k)
    if task.reparam is None:
        return start, {}
    return task.reparam.client_init(start, k)


def client_objective(task: CohortJob, forward, ctx):
    """The algorithm's local objective as a function of (trainable z, per-client constants, x, y, w): the
    task's weighted loss on the batch, wrapped by :meth:`LocalSGDAlgorithm.local_loss`."""
    alg, rp, gp, loss = task.algorithm, task.reparam, task.params, task.task
    assert isinstance(alg, LocalSGDAlgorithm) and loss is not None
    if rp is not None and task.per_client_start:
        raise ValueError("structured codecs (low rank / mask) expand around one shared model; they cannot be "
                         "combined with personalized per-client models")

    def data_loss(x, y, w):
        return lambda p: loss.weighted_loss(forward(p, x), y, w)

    if rp is None:
        return lambda p, c, x, y, w: alg.local_loss(data_loss(x, y, w), p, ctx)
    return lambda z, c, x, y, w: alg.local_loss(data_loss(x, y, w), rp.expand(z, c, gp), ctx)


def custom_client_reason(algorithm: Algorithm) -> str | None:
    """Why ``algorithm`` cannot be vectorized (it runs its own client code), or None."""
    if isinstance(algorithm, CustomClientAlgorithm):
        return f"algorithm {type(algorithm).__name__} runs its own client code (not local SGD on a loss)"
    return None


class Engine:
    name = "base"

    def run(self, task: CohortJob) -> list[ClientReport]:
        raise NotImplementedError


def make_forward(model: nn.Module, buffers: Params):
    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, buffers), (x,))

    return forward

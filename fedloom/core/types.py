"""The frozen types of a round: what the server keeps, what a client reports, what the run is.

State is passed in and returned, never hidden (optax / fedjax style): :class:`ServerState` and
:class:`ClientReport` are frozen dataclasses, changed with :func:`dataclasses.replace`. Their tensors are
updated in place where the loop owns them (the server optimizer steps ``ServerState.params``), as is usual
in PyTorch; the *objects* are never mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

Params = dict[str, torch.Tensor]
Bytes = bytes | bytearray  # a serialized message (fedloom.wire makes bytearrays: decoded in place, no copy)
ParamSpec = dict[str, tuple[tuple[int, ...], torch.dtype]]


def spec_of(params: Mapping[str, torch.Tensor]) -> ParamSpec:
    """Names, shapes and dtypes of ``params`` (what a message carrying them must match)."""
    return {k: (tuple(v.shape), v.dtype) for k, v in params.items()}


@dataclass(frozen=True)
class LocalSchedule:
    """How a client runs local SGD. ``local_steps`` (Stich's H) takes precedence over ``epochs``;
    ``batch_size=None`` means full batch; ``lr_steps`` are per-local-step learning rates (a schedule).
    ``optimizer`` is the client's step rule (:mod:`fedloom.optim`): ``sgd`` (with ``momentum``), ``adam`` or
    ``adamw`` (``betas``, ``eps``); ``weight_decay`` is L2 for sgd and adam, decoupled for adamw."""

    lr: float
    epochs: int = 1
    batch_size: int | None = 10
    local_steps: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_steps: tuple[float, ...] | None = None
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def lr_at(self, s: int) -> float:
        """Learning rate of local step ``s`` (0-based) of this round."""
        if self.lr_steps is None:
            return self.lr
        return self.lr_steps[min(s, len(self.lr_steps) - 1)]

    def lr_sum(self, steps: int) -> float:
        """Sum of the learning rates of the first ``steps`` local steps (SCAFFOLD's K * eta_l)."""
        return sum(self.lr_at(s) for s in range(steps))

    def num_steps(self, n: int) -> int:
        """Local steps of a client with ``n`` samples."""
        if n <= 0:
            return 0
        if self.local_steps is not None:
            return self.local_steps
        b = n if self.batch_size is None else min(self.batch_size, n)
        return self.epochs * -(-n // b)


def client_batches(n: int, sched: LocalSchedule, gen: torch.Generator) -> list[torch.Tensor]:
    """Local minibatch index lists for a client with ``n`` samples (shared by every engine and runtime).

    Epoch mode: each epoch is a fresh permutation cut into batches (the last one may be smaller).
    Step mode (``local_steps=H``): H batches of ``min(batch_size, n)`` taken from a stream of successive
    permutations, so a batch may straddle an epoch boundary.
    """
    if n <= 0:
        return []
    b = n if sched.batch_size is None else min(sched.batch_size, n)
    if sched.local_steps is None:
        out: list[torch.Tensor] = []
        for _ in range(sched.epochs):
            out.extend(torch.randperm(n, generator=gen).split(b))
        return out
    need = sched.local_steps * b
    stream = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-need // n))])[:need]
    return list(stream.view(sched.local_steps, b))


@dataclass(frozen=True)
class ClientReport:
    """One client's report. On the client: what its local work produced (``update`` = local model minus the
    model it started from, Konecny et al.'s H_t^i), transformed by the client pipeline. On the server: what
    was decoded and validated from its message. ``payload`` holds what cannot be read as tensors (Paillier
    ciphertexts, summed only by the ciphertext aggregator). ``norm`` is the L2 norm of ``update``, set by the
    server pipeline when it validates the report (the same pass proves every entry finite), so the norm guard
    does not read the update again; None elsewhere (whoever replaces ``update`` after validation resets it)."""

    client: int
    update: Params
    num_samples: int
    train_loss: float | None
    meta: Mapping[str, Any] = field(default_factory=dict)
    payload: Any = None
    norm: float | None = None


@dataclass(frozen=True)
class ServerState:
    """Everything the server carries between rounds (checkpointed)."""

    params: Params
    opt_state: Any
    round: int = 0
    algo_state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Aggregate:
    """Step 5's result: the aggregated update (None when nothing was accepted), the reports it was made from
    (for a ciphertext sum: the contributors' plaintext metadata only), the aggregator's metrics for the round's
    record, and reports it refused while aggregating (``{"client", "reason"}``)."""

    update: Params | None
    reports: Sequence[ClientReport]
    metrics: Mapping[str, Any] = field(default_factory=dict)
    rejected: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class RoundInfo:
    """What a client knows about the round it works in: the round number, its id, and the meta of the shared
    broadcast (e.g. a DP clip norm the server sets)."""

    round: int
    client: int
    broadcast_meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Broadcast:
    """Step 2's messages: one shared message every sampled client receives (b"" when nothing is shared) and
    personalized messages by client id."""

    shared: Bytes
    personal: Mapping[int, Bytes] = field(default_factory=dict)

    def bytes_for(self, clients: Sequence[int]) -> int:
        """Bytes sent down to ``clients`` (each receives the shared message and its own)."""
        return len(self.shared) * len(clients) + sum(len(self.personal.get(k, b"")) for k in clients)


class Task(Protocol):
    """The learning task that travels with the model (:mod:`fedloom.models.tasks`): the training loss and the
    evaluation metrics. Implementations are pure functions of model outputs and targets."""

    name: str
    headline: str  # the metric a run is judged by, e.g. "test_accuracy"

    def weighted_loss(self, outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(weighted mean loss, (sum of weighted per-sample losses, sum of weights)); ``weights`` is 0 on
        padding rows of the vectorized engine."""
        ...

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Sums over one evaluation batch (e.g. summed loss, correct predictions)."""
        ...

    def summarize(self, sums: Mapping[str, float], count: int) -> dict[str, float]:
        """Metrics from the summed scores over ``count`` targets (e.g. test_loss, test_accuracy)."""
        ...


class ServerOptimizer(Protocol):
    """Applies the aggregated update H to the global model (``fedloom.algorithms.server_opt``)."""

    def init(self, params: Params) -> Any: ...

    def step(self, params: Params, update: Params, state: Any) -> Any: ...


@dataclass(frozen=True)
class RunContext:
    """The frozen facts of a run that algorithms, stages and aggregators may read (never the runtime object).

    ``data`` is the federated data (``num_clients``, ``client_sizes``, ``source``, per-client data);
    ``client_states`` is a read-only view of stateful clients' states in the simulation (FD evaluates the
    devices' own models from it)."""

    seed: int
    rounds: int
    cohort_size: int
    device: torch.device
    model: nn.Module  # the architecture template; its own parameters are not trained
    buffers: Params
    param_spec: ParamSpec
    data: Any
    task: Task
    schedule: LocalSchedule  # the configured local schedule (before the algorithm's per-round changes)
    server_optimizer: ServerOptimizer
    eval_batch_size: int = 4096
    client_states: Mapping[int, Any] = field(default_factory=dict)
    model_name: str = ""  # the configured model (registry name and parameters), for algorithms that build
    model_params: Mapping[str, Any] = field(default_factory=dict)  # more models of it (FD's per-device models)

    @property
    def num_clients(self) -> int:
        return int(self.data.num_clients)


Evaluator = Callable[[RunContext, ServerState], dict[str, Any]]

"""What an algorithm supplies to the round loop: its math, in one of two forms chosen by type.

* :class:`LocalSGDAlgorithm` -- client work is local SGD on a loss. The algorithm gives only the local
  objective as a function of the parameters (:meth:`~LocalSGDAlgorithm.local_loss`, wrapping the task's data
  loss: FedProx adds a proximal term, SCAFFOLD a linear correction, HeteroFL masks the parameters); engines run
  it one client at a time or vmapped over the whole cohort, so this form is vectorizable by construction.
* :class:`CustomClientAlgorithm` -- client work is arbitrary code (:meth:`~CustomClientAlgorithm.train_client`:
  RL rollouts, distillation with per-device models); it runs on the sequential engine.

Both share the server side, every hook defaulting to FedAvg: what travels (:meth:`~Algorithm.broadcast`,
:meth:`~Algorithm.personal`, :meth:`~Algorithm.upload_spec`), per-message validation
(:meth:`~Algorithm.check_report`), aggregation (:meth:`~Algorithm.make_aggregator`; None = the run's
configured pipeline: weighted mean, robust rule, central DP or ciphertext sum), the one server step
(:meth:`~Algorithm.server_step`), and what is measured (:meth:`~Algorithm.evaluate`). Algorithms receive the
frozen :class:`~fedloom.core.types.RunContext`, never the runtime. Sampling, transport, byte accounting,
checkpoints and logging live in :mod:`fedloom.core.loop` and the runtimes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.core.aggregate import Aggregator
from fedloom.core.types import Aggregate, ClientReport, LocalSchedule, Params, ParamSpec, RunContext, ServerState
from fedloom.metrics.evaluation import evaluate_model

DataLoss = Callable[[Params], tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]]


class AlgorithmParams(BaseModel):
    """Parameters every algorithm takes."""

    model_config = ConfigDict(extra="forbid")
    weighting: str = Field("samples", pattern="^(samples|uniform)$", description="client weights in the mean")


@dataclass(frozen=True)
class Traits:
    """What an algorithm declares about itself, read by the compatibility rules (:mod:`fedloom.core.compat`)."""

    #: "labelled": clients hold labelled data; "environment": clients are RL environments
    data: str = "labelled"
    #: the aggregation is the plain weighted mean of model updates, so the run's configured aggregator (robust
    #: rules, central DP, the ciphertext sum) may stand in for it; False when :meth:`Algorithm.make_aggregator`
    #: returns the algorithm's own rule
    plain_mean: bool = True
    #: uploads are model updates (FD uploads per-label logits: codecs do not apply)
    uploads_model: bool = True
    #: clients train from per-client models sent in personal messages (hierarchical groups)
    personalized_models: bool = False
    #: the server step averages models exactly (needs server_optimizer sgd with lr 1)
    averages_models: bool = False
    #: why the algorithm's math assumes clients run SGD restarted each round (FedNova's step coefficients,
    #: SCAFFOLD's option-II control variate); "" = any client optimizer (``client.optimizer``) works
    sgd_only: str = ""


class Algorithm:
    """The server side and what travels; subclass :class:`LocalSGDAlgorithm` or :class:`CustomClientAlgorithm`."""

    #: the metric shown in the progress bar and plots; None = the task's (test_accuracy for classification)
    headline: ClassVar[str | None] = None
    traits: ClassVar[Traits] = Traits()
    #: config overrides that make a tiny valid run of this algorithm (the algorithm contract suite runs it)
    contract_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: AlgorithmParams):
        self.p = params

    # -- set-up --------------------------------------------------------------------------------------------
    def prepare_data(self, data: Any, seed: int) -> Any:
        """Called once right after the federated data is built, before anything is sized from it: return the
        data the run uses (FAug adds generated samples). Default: unchanged."""
        return data

    def bind(self, ctx: RunContext) -> None:
        """Called once with the frozen run context before :meth:`upload_spec` is read (per-device models,
        environments, the model's group layout are set up here). Raise ValueError for a model or data the
        algorithm cannot run on. Default: nothing."""

    def init_state(self, ctx: RunContext) -> dict[str, Any]:
        """The algorithm's part of the initial server state (SCAFFOLD's c). Default: none."""
        return {}

    def local_schedule(self, base: LocalSchedule, rnd: int) -> LocalSchedule:
        """Round ``rnd``'s local schedule (FedSGD: one full batch; post-local SGD: 1 step during warm-up,
        then H). Default: the configured one."""
        return base

    # -- what travels --------------------------------------------------------------------------------------
    def broadcast(self, state: ServerState) -> Params:
        """Tensors of the one shared down message. Default: the global model. Extra entries (SCAFFOLD's c) must
        not clash with parameter names: use a prefix (``scaffold.c.``)."""
        return dict(state.params)

    def personal(self, state: ServerState, k: int) -> Params:
        """A personalized down message for client k (empty = none), counted per client. If it carries every
        model parameter, client k trains from that model (hierarchical groups)."""
        return {}

    def upload_spec(self, model_spec: ParamSpec) -> ParamSpec:
        """Names, shapes and dtypes an upload must carry (the server rejects anything else). Default: the
        model's parameters."""
        return model_spec

    def client_finish(self, job: Any, report: ClientReport) -> ClientReport:
        """On client k right after its local work (before the client pipeline): may read and write
        ``job.client_states[k]`` (kept between rounds, checkpointed) and add declared upload entries
        (SCAFFOLD's control-variate change). Default: unchanged."""
        return report

    # -- server side ---------------------------------------------------------------------------------------
    def check_report(self, report: ClientReport) -> None:
        """Validate the algorithm's own metadata in a decoded report (raise ValueError: the client is
        rejected). Default: nothing to check."""

    def max_samples(self, ctx: RunContext, k: int) -> int | None:
        """The largest ``num_samples`` client k can honestly report (its aggregation weight): a larger claim
        rejects the client. Default: its data size (``ctx.data.client_size(k)``: local SGD reports the samples it
        trained on; one client's size, not the population's sizes: O(1) per report); None = no bound."""
        size, n = getattr(ctx.data, "client_size", None), getattr(ctx.data, "num_clients", None)
        return None if size is None or n is None or not 0 <= k < n else int(size(k))

    def make_aggregator(self, ctx: RunContext) -> Aggregator | None:
        """The algorithm's own aggregation rule, or None to use the run's configured one."""
        return None

    def server_step(self, ctx: RunContext, state: ServerState, agg: Aggregate) -> tuple[ServerState, dict[str, Any]]:
        """Step 6: apply the aggregate; return the new state and extra metrics for the round's record.
        Default: the server optimizer steps the model (W <- W + eta H for plain ``sgd``)."""
        assert agg.update is not None
        opt_state = ctx.server_optimizer.step(state.params, agg.update, state.opt_state)
        return replace(state, opt_state=opt_state), {}

    def evaluate(self, ctx: RunContext, state: ServerState) -> dict[str, Any]:
        """Metrics of the server state on evaluation rounds. Default: the task's metrics of the global model on
        the test set."""
        src = ctx.data.source
        return evaluate_model(ctx.task, ctx.model, state.params, ctx.buffers, src.test_x, src.test_y,
                              ctx.eval_batch_size, ctx.device)

    def final_state(self, ctx: RunContext, state: ServerState) -> dict[str, Any]:
        """What ``model.pt`` holds at the end of a run. Default: the global model's parameters."""
        return {k: v.cpu() for k, v in state.params.items()}


class LocalSGDAlgorithm(Algorithm):
    """Client work is local SGD on :meth:`local_loss` (vectorizable by construction)."""

    def local_loss(self, data_loss: DataLoss, params: Params, ctx: Mapping[str, Any]
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The local objective at ``params``. ``data_loss(p)`` is the task's weighted loss of the model at p on
        the current batch, with aux (summed loss, summed weight) for the reported train loss. ``ctx`` holds
        :meth:`loss_context` and :meth:`client_inputs`. Must be a pure torch function (vmap-safe)."""
        return data_loss(params)

    def loss_context(self, global_params: Params) -> dict[str, Any]:
        """Round-constant inputs of the local objective (the same for every client; not vmapped)."""
        return {}

    def client_inputs(self, job: Any, k: int) -> dict[str, torch.Tensor]:
        """Per-client tensor inputs of the local objective (a HeteroFL width, SCAFFOLD's c - c_i). Every client
        returns the same keys and shapes: the vectorized engine stacks them along the cohort axis."""
        return {}

    def client_meta(self, job: Any, k: int) -> dict[str, Any]:
        """JSON-able metadata client k reports next to its update (Fed2's per-class counts)."""
        return {}


class CustomClientAlgorithm(Algorithm):
    """Client work is arbitrary code; runs on the sequential engine."""

    def train_client(self, job: Any, k: int) -> ClientReport:
        """Client k's work in this round: return its report (update entries as :meth:`upload_spec` says)."""
        raise NotImplementedError

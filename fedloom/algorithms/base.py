"""What an algorithm supplies to the round loop: its math, nothing else.

* the local objective, as a *functional* loss ``client_loss(forward, params, x, y, w, ctx)`` -- engines run
  local SGD on it, one client at a time (sequential) or a whole cohort at once under ``torch.func.vmap``
  (vectorized);
* optionally, arbitrary client code (``train_client``) for methods that are not local SGD on a loss; such an
  algorithm sets ``vectorizable = False`` and runs on the sequential engine;
* the aggregation of decoded client updates (``aggregate``), by default the weighted mean.

Algorithms that are not "average a model" (federated distillation, RL, SCAFFOLD's control variates) change what
travels and what the server keeps through a few more hooks, all defaulting to FedAvg's behaviour:
``broadcasts_model`` / ``broadcast_extras`` / ``client_broadcast`` (down messages), ``upload_spec`` (what an
upload must contain), ``client_finish`` with ``task.client_states`` (persistent per-client state, checkpointed),
``server_update`` (apply the aggregate), ``evaluate`` and ``headline`` (what is measured), ``bind`` (access to
the run).

Sampling, transport, byte accounting, evaluation and logging live in :mod:`fedloom.simulation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

Params = dict[str, torch.Tensor]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LocalSchedule:
    """How a client runs local SGD.

    ``local_steps`` (Stich's H) takes precedence over ``epochs``. ``batch_size=None`` means full batch.
    """

    lr: float
    epochs: int = 1
    batch_size: int | None = 10
    local_steps: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_steps: tuple[float, ...] | None = None  # per-local-step learning rates (a schedule); None: lr throughout

    def lr_at(self, s: int) -> float:
        """Learning rate of local step ``s`` (0-based) of this round."""
        if self.lr_steps is None:
            return self.lr
        return self.lr_steps[min(s, len(self.lr_steps) - 1)]

    def lr_sum(self, steps: int) -> float:
        """Sum of the learning rates of the first ``steps`` local steps (SCAFFOLD's K * eta_l)."""
        return sum(self.lr_at(s) for s in range(steps))

    def num_steps(self, n: int) -> int:
        if n <= 0:
            return 0
        if self.local_steps is not None:
            return self.local_steps
        b = n if self.batch_size is None else min(self.batch_size, n)
        return self.epochs * -(-n // b)


def client_batches(n: int, sched: LocalSchedule, gen: torch.Generator) -> list[torch.Tensor]:
    """Local minibatch index lists for a client with ``n`` samples (shared by every engine).

    Epoch mode: each epoch is a fresh permutation cut into batches (the last one may be smaller).
    Step mode (``local_steps=H``): H batches of ``min(batch_size, n)`` taken from a stream of successive
    permutations, so a batch may straddle an epoch boundary.
    """
    if n <= 0:
        return []
    b = n if sched.batch_size is None else min(sched.batch_size, n)
    if sched.local_steps is None:
        out = []
        for _ in range(sched.epochs):
            out.extend(torch.randperm(n, generator=gen).split(b))
        return out
    need = sched.local_steps * b
    stream = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-need // n))])[:need]
    return list(stream.view(sched.local_steps, b))


@dataclass
class ClientOutput:
    """What one client's work produced, before encoding."""

    update: Params  # local model minus the broadcast model (Konecny et al.'s H_t^i)
    num_samples: int
    train_loss: float
    meta: dict[str, Any] = field(default_factory=dict)


class AlgorithmParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weighting: str = Field("samples", pattern="^(samples|uniform)$", description="client weights in the mean")


class Algorithm:
    """Base class: FedAvg-style local SGD on :meth:`client_loss`, weighted-mean aggregation."""

    vectorizable: bool = True
    broadcasts_model: bool = True  # False: the shared down message carries only broadcast_extras() (e.g. FD)
    headline: str = "test_accuracy"  # the metric shown in the progress bar
    uses_environments: bool = False  # True: clients are RL environments (fedloom.registry.ENVIRONMENTS)

    def __init__(self, params: BaseModel):
        self.p = params

    # -- client side -------------------------------------------------------------------------------
    def schedule(self, base: LocalSchedule) -> LocalSchedule:
        """The local schedule this algorithm runs (FedSGD, local SGD override parts of the configured one)."""
        return base

    def client_loss(self, forward: Forward, params: Params, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    ctx: Mapping[str, Any]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Weighted mean cross-entropy over the batch; ``w`` is 0 on padding rows (vectorized engine).

        Returns (loss, (sum of per-sample losses * w, sum of w)) -- the aux feeds the reported train loss.
        """
        losses = F.cross_entropy(forward(params, x), y, reduction="none")
        if losses.dim() > 1:  # per-position targets (logits [B, C, d1..], y [B, d1..]): mean over positions
            losses = losses.flatten(1).mean(1)
        lw = (losses * w).sum()
        sw = w.sum()
        return lw / sw.clamp_min(1.0), (lw.detach(), sw.detach())

    def round_schedule(self, sched: LocalSchedule, rnd: int) -> LocalSchedule:
        """The local schedule of round ``rnd`` (post-local SGD: 1 step per round during warm-up, then H; a
        learning-rate decay). Default: the same every round."""
        return sched

    def client_context(self, global_params: Params) -> dict[str, Any]:
        """Round-constant inputs of the local objective (same for every client; not vmapped)."""
        return {}

    def client_inputs(self, task: Any, k: int) -> dict[str, torch.Tensor]:
        """Per-client tensor inputs of the local objective (e.g. a HeteroFL width), merged into ``ctx``.

        Every client must return the same keys and shapes: the vectorized engine stacks them along the cohort
        axis and vmaps over them. ``task`` is the round's :class:`fedloom.engine.CohortTask`.
        """
        return {}

    def client_meta(self, task: Any, k: int) -> dict[str, Any]:
        """What client k reports next to its update (JSON-able; travels in the message meta), e.g. Fed2's
        per-class sample counts."""
        return {}

    def client_finish(self, task: Any, k: int, out: ClientOutput) -> ClientOutput:
        """On client k, right after its local work (before attacks, DP and encoding): may read and write
        ``task.client_states[k]`` (kept between rounds, checkpointed) and add entries to ``out.update`` that
        :meth:`upload_spec` declares (e.g. SCAFFOLD's control-variate change). Default: unchanged."""
        return out

    # -- what travels ------------------------------------------------------------------------------
    def broadcast_extras(self, state: Any) -> Params:
        """Extra tensors in the one shared down message (clients see them as ``task.extras``). Names must not
        clash with model parameters: use a prefix (``scaffold.c.``, ``fd.``)."""
        return {}

    def client_broadcast(self, state: Any, k: int) -> Params:
        """A personalized down message for client k (``task.personal[k]``); empty = none. Counted per client.
        If it carries every model parameter (and ``broadcasts_model`` is False), client k trains from that
        model instead of a shared one (hierarchical / clustered FL): its update is relative to it."""
        return {}

    def upload_spec(self, expected: dict[str, tuple[tuple[int, ...], torch.dtype]]
                    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Names, shapes and dtypes a client's upload must carry (the server rejects anything else).
        ``expected`` is the model parameters' spec, the default upload."""
        return expected

    # -- server side -------------------------------------------------------------------------------
    def setup(self, model: torch.nn.Module) -> None:
        """Called once with the architecture template before the first round, for algorithms whose
        aggregation depends on the model's structure (Fed2's group layout, neuron matching). Default: nothing."""

    def prepare_data(self, data: Any, cfg: Any) -> Any:
        """Called once right after the federated data is built, before anything is sized from it (sampling
        weights, the model): return the data the run uses (FAug adds generated samples). Default: unchanged."""
        return data

    def final_state(self, sim: Any) -> dict[str, Any]:
        """What ``model.pt`` holds at the end of a run. Default: the global model's parameters."""
        return {k: v.cpu() for k, v in sim.state.params.items()}

    def bind(self, sim: Any) -> None:
        """Called once near the end of ``Simulation.__init__`` with the run (config, data, model template, device,
        server state), before :meth:`upload_spec` is read and codecs / secure aggregation are set up: build
        per-device models, environments, probe sets here. Default: nothing."""

    def server_update(self, state: Any, agg: Params, server_opt: Any) -> dict[str, Any]:
        """Step 6: apply the aggregated update to the server state; return extra metrics for the round's
        record. Default: the server optimizer steps the model (W <- W + eta H for plain ``sgd``)."""
        state.opt_state = server_opt.step(state.params, agg, state.opt_state)
        return {}

    def evaluate(self, sim: Any) -> dict[str, Any]:
        """Metrics of the current server state on eval rounds (merged into metrics.jsonl). Default: loss and
        top-1 accuracy of the global model on the test set."""
        from fedloom.simulation import evaluate

        src = sim.data.source
        loss, acc = evaluate(sim.model, sim.state.params, sim.buffers, src.test_x, src.test_y,
                             sim.cfg.eval_batch_size, sim.device)
        return {"test_loss": loss, "test_accuracy": acc}

    def server_aggregate(self, global_params: Params, updates: list[Params], weights: list[Any]) -> Params:
        """Step 5: the aggregated update H from decoded client updates. Most algorithms only need
        :meth:`aggregate`; those that align client models to the current global one (matching) override this."""
        return self.aggregate(updates, weights)

    def client_weight(self, out_meta: Mapping[str, Any]) -> float:
        return float(out_meta["num_samples"]) if self.p.weighting == "samples" else 1.0

    def aggregate(self, updates: list[Params], weights: list[float]) -> Params:
        """Weighted mean of client updates (accumulated in place; no cohort-sized stack)."""
        total = float(sum(weights))
        acc = {k: torch.zeros_like(v) for k, v in updates[0].items()}
        for u, w in zip(updates, weights):
            for k, v in u.items():
                acc[k].add_(v, alpha=w / total)
        return acc

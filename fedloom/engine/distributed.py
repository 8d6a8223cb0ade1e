"""The ``distributed`` engine: a round's cohort sharded over torch.distributed ranks (scale-out simulation).

Every rank runs the same simulation (:class:`fedloom.simulation.Simulation`) (same config, same seed, so the same cohort
plan and broadcast model). In step 3 rank r trains the clients ``cohort[r::W]`` with a local engine
(``vectorized`` by default, falling back to ``sequential`` exactly when the simulator would), then the
per-client outputs are all-gathered so every rank holds the whole cohort's updates, in cohort order, and runs
steps 4-6 identically. Because client randomness is derived from (seed, round, client) (:mod:`fedloom.rng`),
W ranks give the same model as 1 rank (tests/distributed/test_local_sgd.py). Every rank builds the same federated
data -- the same client store (memory-mapped) or generated population -- and its local engine reads only its own
shard of each cohort through ``data.cohort`` (tests/engine/test_distributed_lazy.py).

This is pfl-research's approach (each worker simulates a shard of the cohort). pfl all-reduces the
*aggregate*; gathering the individual updates instead costs more bandwidth but keeps everything downstream
unchanged -- codecs, byte accounting from the real serialized messages, robust aggregators, DP and secure
aggregation all see the individual client messages. With no process group (or one rank) it is the local
engine.

Multi-node (2 nodes x 8 CPU processes; gloo, or nccl with ``device=cuda``); only rank 0 writes the run dir::

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-id RUN \\
        --rdzv-endpoint $MASTER:29400 -m fedloom.distributed.simulate examples/fedavg_digits.yaml \\
        engine=distributed threads=1 --out runs/scaleout

One machine: ``torchrun --standalone --nproc-per-node 4 -m fedloom.distributed.simulate CONFIG engine=distributed``.
"""

from __future__ import annotations

from dataclasses import replace

import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field

from fedloom.core.types import ClientReport
from fedloom.engine.base import CohortJob, Engine
from fedloom.engine.sequential import SequentialEngine
from fedloom.engine.vectorized import VectorizedEngine, VectorizedParams, fallback_reason
from fedloom.registry import ENGINES


class DistributedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    local: str = Field("vectorized", pattern="^(vectorized|sequential)$", description="engine each rank runs its shard on")
    chunk_size: int = Field(1024, ge=1, description="vectorized chunk size on each rank")


@ENGINES.register("distributed", DistributedParams, "torch.distributed ranks each run a shard of the cohort (torchrun)")
class DistributedEngine(Engine):
    name = "distributed"

    def __init__(self, params: DistributedParams | None = None):
        self.p = params or DistributedParams()

    def _local_engine(self, task: CohortJob) -> Engine:
        if self.p.local == "sequential" or fallback_reason(task.algorithm, task.model):
            return SequentialEngine()
        return VectorizedEngine(VectorizedParams(chunk_size=self.p.chunk_size))

    def run(self, task: CohortJob) -> list[ClientReport]:
        local = self._local_engine(task)
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return local.run(task)
        rank, world = dist.get_rank(), dist.get_world_size()
        positions = list(range(rank, len(task.clients), world))
        mine = local.run(replace(task, clients=[task.clients[i] for i in positions])) if positions else []
        kept = task.optimizer_states  # persisted optimizer states: gathered too, so every rank holds them all
        payload = [(i, _to_cpu(o), _state_to(kept[o.client], "cpu") if kept is not None else None)
                   for i, o in zip(positions, mine)]
        gathered: list = [None] * world
        dist.all_gather_object(gathered, payload)
        out: list[ClientReport | None] = [None] * len(task.clients)
        for part in gathered:
            for i, o, st in part:
                out[i] = replace(o, update={k: v.to(task.device) for k, v in o.update.items()})
                if kept is not None:
                    kept[o.client] = _state_to(st, task.device)
        return out  # type: ignore[return-value]


def _to_cpu(o: ClientReport) -> ClientReport:
    return replace(o, update={k: v.detach().to("cpu", copy=True) for k, v in o.update.items()})


def _state_to(state: dict, device) -> dict:
    """An optimizer state (:mod:`fedloom.optim`) moved to ``device``."""
    return {k: ({n: t.detach().to(device, copy=True) for n, t in v.items()} if isinstance(v, dict)
                else v.detach().to(device, copy=True)) for k, v in state.items()}

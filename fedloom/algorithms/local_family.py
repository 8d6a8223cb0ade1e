"""Post-local and hierarchical local SGD (Lin, Stich, Patel, Jaggi, "Don't Use Large Mini-Batches, Use Local
SGD", ICLR 2020) in the round loop -- the same schedules as :mod:`fedloom.distributed.local_sgd`, where the
K workers are processes; here they are clients and one round ends at every synchronization.

* ``postlocal``: for global steps t <= t' (``post_local_from``) every round is one local step followed by
  averaging (= mini-batch SGD with global batch K*b: averaging parameters after one plain SGD step equals
  averaging the gradients); after t', rounds of H local steps (local SGD). Rounds 1..t' are warm-up rounds.
* ``hierarchical``: the same warm-up; then rounds of H steps after which each *group* of ``group_size``
  consecutive client ids averages its models, and every H_b-th such round (global step t a multiple of
  H*H_b) all clients average. The server keeps one model per group and sends each client its group's model
  (``personal``: bytes are counted per client); ``state.params`` is always the mean of the groups'
  models (the model that is evaluated).

``lr_milestones`` (global steps) decay the client learning rate by ``lr_decay`` (Lin et al. switch to local
SGD at the first decay). Steps are counted like :func:`fedloom.distributed.local_sgd.sync_kind`, so a run
with momentum 0 equals the torch.distributed trainer with ``sampling="shard"`` (tests/distributed). The
simulator's momentum buffers start at 0 every round (clients are stateless); the torch.distributed trainer
keeps them across synchronizations as the reference code does -- with momentum the two differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from pydantic import Field, model_validator

from fedloom.algorithms.fedavg import LocalSGD, LocalSGDParams
from fedloom.core.aggregate import sample_weight, weighted_mean
from fedloom.core.algorithm import Traits
from fedloom.core.types import Aggregate, ClientReport, LocalSchedule, Params, ServerState
from fedloom.registry import ALGORITHMS


class PostLocalParams(LocalSGDParams):
    post_local_from: int = Field(0, ge=0, description="t': one local step per round (mini-batch SGD) for global "
                                                      "steps t <= t', then H")
    lr_milestones: list[int] = Field(default_factory=list, description="global steps after which the client lr "
                                                                       "is multiplied by lr_decay")
    lr_decay: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _aligned(self) -> PostLocalParams:
        H, tp = self.local_steps, self.post_local_from
        if tp % H:
            raise ValueError(f"post_local_from: t'={tp} must be a multiple of local_steps H={H}")
        bad = [m for m in self.lr_milestones if m > tp and (m - tp) % H]
        if bad:
            raise ValueError(f"lr_milestones: {bad} fall inside a round of H={H} local steps (after t'={tp}, "
                             f"milestones must be t' + a multiple of H)")
        return self


def round_steps(rnd: int, H: int, t_prime: int) -> tuple[int, int]:
    """(first global step, number of local steps) of round ``rnd`` (1-based) of post-local SGD."""
    if rnd <= t_prime:
        return rnd, 1
    return t_prime + (rnd - t_prime - 1) * H + 1, H


@ALGORITHMS.register("postlocal", PostLocalParams, "post-local SGD (Lin et al. 2020): H=1 until t', then H")
class PostLocalSGD(LocalSGD):
    p: PostLocalParams

    def local_schedule(self, base: LocalSchedule, rnd: int) -> LocalSchedule:
        sched = super().local_schedule(base, rnd)
        t0, h = round_steps(rnd, self.p.local_steps, self.p.post_local_from)
        lr = sched.lr * self.p.lr_decay ** sum(t0 > m for m in self.p.lr_milestones)
        return replace(sched, local_steps=h, lr=lr)


class HierarchicalParams(PostLocalParams):
    group_size: int = Field(..., ge=1, description="clients per group (consecutive client ids)")
    global_every: int = Field(2, ge=1, description="H_b: all clients average every H*H_b global steps")


@ALGORITHMS.register("hierarchical", HierarchicalParams,
                     "hierarchical local SGD (Lin et al. 2020): group averages every H, global every H*H_b")
class HierarchicalLocalSGD(PostLocalSGD):
    p: HierarchicalParams
    traits = Traits(plain_mean=False, personalized_models=True, averages_models=True)  # per-group means
    contract_config = {"algorithm": {"name": "hierarchical", "group_size": 2, "local_steps": 2}}

    def bind(self, ctx) -> None:
        n, g = ctx.num_clients, self.p.group_size
        if n % g:
            raise ValueError(f"algorithm.group_size: {n} clients are not divisible into groups of {g}")
        self.num_groups = n // g

    def _groups(self, state) -> list[Params] | None:
        return state.algo_state.get("groups")  # None: every group holds the global model

    def broadcast(self, state) -> Params:
        return {}  # each client gets its group's model instead (personal)

    def personal(self, state, k: int) -> Params:
        groups = self._groups(state)
        return dict(state.params) if groups is None else dict(groups[k // self.p.group_size])

    def make_aggregator(self, ctx) -> GroupMeans:
        return GroupMeans(self.num_groups, self.p.group_size, self.p.weighting)

    def server_step(self, ctx, state, agg):
        groups = self._groups(state) or [{n: v.clone() for n, v in state.params.items()}
                                         for _ in range(self.num_groups)]
        for j, g in enumerate(groups):
            for n in g:
                if f"g{j}/{n}" in agg.update:
                    g[n].add_(agg.update[f"g{j}/{n}"])
        t0, h = round_steps(state.round, self.p.local_steps, self.p.post_local_from)
        t_end = t0 + h - 1
        glob = state.round <= self.p.post_local_from or t_end % (self.p.local_steps * self.p.global_every) == 0
        for n in state.params:  # the evaluated model: the mean of the groups (= of all clients, equal groups)
            state.params[n].copy_(torch.stack([g[n] for g in groups]).mean(0))
        return replace(state, algo_state={**state.algo_state, "groups": None if glob else groups}), \
            {"sync": "global" if glob else "group"}


class GroupMeans:
    """Per-group weighted means of the updates, as entries ``g<j>/<name>`` (groups of consecutive client ids)."""

    def __init__(self, num_groups: int, group_size: int, weighting: str):
        self.num_groups, self.group_size, self.weighting = num_groups, group_size, weighting

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports)
        out: Params = {}
        for j in range(self.num_groups):
            mine = [r for r in reports if r.client // self.group_size == j]
            if mine:
                mean = weighted_mean([r.update for r in mine], [sample_weight(r, self.weighting) for r in mine])
                out.update({f"g{j}/{n}": v for n, v in mean.items()})
        return Aggregate(out, reports)

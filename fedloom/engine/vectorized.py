"""The vectorized engine: a whole cohort's local SGD as one batched computation.

Client parameters are stacked along a leading cohort axis and every local step is one call of
``vmap(grad(loss))`` over (params, batch) -- ``torch.func`` turns the per-client matmuls into batched ones.

Unequal client data: client k runs ``steps_k`` local steps with batches of up to B rows. Each chunk's rows are
read once through the data's ``cohort(clients)`` (a view for in-memory data; only those clients' rows for a
store or a generated population) and laid out as a [C, S_max, B_max] grid of row indices with a weight mask:
padding rows get weight 0 (the loss is a weighted mean, so they contribute nothing), and steps past a client's
own count are *inactive* -- its parameters and momentum buffers are left as they are. This reproduces
per-client training exactly. To keep padding low, clients are bucketed: the cohort is sorted by step count and
processed in chunks of at most ``chunk_size`` clients (which also bounds memory), so each chunk pads only to
its own longest client.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.func import grad, vmap

from fedloom.core.algorithm import LocalSGDAlgorithm
from fedloom.core.types import ClientReport
from fedloom.engine.base import CohortJob, Engine, client_objective, client_start, custom_client_reason, make_forward
from fedloom.models import vmap_unsafe_reason
from fedloom.optim import sgd_step_
from fedloom.registry import ENGINES


class VectorizedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunk_size: int = Field(1024, ge=1, description="max clients in one batched computation (memory bound)")
    bucket: bool = Field(True, description="sort the cohort by local step count before chunking (less padding)")


def fallback_reason(algorithm, model) -> str | None:
    """Why a run cannot use the vectorized engine (it then runs on the sequential one), or None."""
    return custom_client_reason(algorithm) or vmap_unsafe_reason(model)


@ENGINES.register("vectorized", VectorizedParams, "torch.func.vmap over the whole cohort (default)")
class VectorizedEngine(Engine):
    name = "vectorized"

    def __init__(self, params: VectorizedParams | None = None):
        self.p = params or VectorizedParams()

    def run(self, task: CohortJob) -> list[ClientReport]:
        sizes = [task.data.client_size(k) for k in task.clients]
        steps = [task.schedule.num_steps(n) for n in sizes]
        order = sorted(range(len(task.clients)), key=lambda i: steps[i]) if self.p.bucket else list(range(len(task.clients)))
        out: list[ClientReport | None] = [None] * len(task.clients)
        for s in range(0, len(order), self.p.chunk_size):
            chunk = order[s : s + self.p.chunk_size]
            for i, res in zip(chunk, self._run_chunk(task, [task.clients[i] for i in chunk])):
                out[i] = res
        return out  # type: ignore[return-value]

    def _run_chunk(self, task: CohortJob, clients: list[int]) -> list[ClientReport]:
        alg, sched, dev = task.algorithm, task.schedule, task.device
        assert isinstance(alg, LocalSGDAlgorithm), custom_client_reason(alg)
        C = len(clients)
        batches = [task.batches(k) for k in clients]
        S = max((len(b) for b in batches), default=0)
        B = max((len(x) for bs in batches for x in bs), default=1)
        # The chunk's rows, read once (in memory: a view of the training set; lazy data: only these clients'),
        # then [C, S, B] row indices into them, weights (1 real row / 0 padding) and per-step activity.
        cohort = task.data.cohort(clients)
        gidx = torch.zeros(C, S, B, dtype=torch.int64)
        wts = torch.zeros(C, S, B)
        cell, rows = _grid_cells(cohort.rows, batches, S, B)  # one scatter, not one per (client, step)
        gidx.view(-1)[cell] = rows
        wts.view(-1)[cell] = 1.0
        active = wts.sum(-1) > 0  # [C, S]
        all_active = bool(active.all())
        gidx, wts, active = gidx.to(dev), wts.to(dev), active.to(dev)
        x_all, y_all = cohort.x, cohort.y
        if x_all.device != dev:
            x_all, y_all = x_all.to(dev), y_all.to(dev)

        forward = make_forward(task.model, task.buffers)
        ctx = alg.loss_context(task.params)
        if task.reparam is None and not task.per_client_start:
            z0 = {n: p.detach().unsqueeze(0).expand(C, *p.shape) for n, p in task.params.items()}
            consts: dict = {}
        else:  # per-client z0 (personalized models; codecs' structured updates) and constants, stacked
            starts = [client_start(task, k) for k in clients]
            z0 = {n: torch.stack([s[0][n] for s in starts]) for n in starts[0][0]}
            consts = {n: torch.stack([s[1][n] for s in starts]) for n in starts[0][1]}
        params = {n: p.detach().clone(memory_format=torch.contiguous_format) for n, p in z0.items()}
        bufs = {n: torch.zeros_like(p) for n, p in params.items()} if sched.momentum else None
        # per-client inputs of the objective (e.g. a width mask), stacked along the cohort axis and vmapped
        per_client = [alg.client_inputs(task, k) for k in clients]
        cin = {n: torch.stack([pc[n] for pc in per_client]).to(dev) for n in per_client[0]} if per_client else {}
        step = vmap(grad(lambda p, c, x, y, w, ci: client_objective(task, forward, {**ctx, **ci})(p, c, x, y, w),
                         has_aux=True))
        lw_sum = torch.zeros(C, device=dev)
        w_sum = torch.zeros(C, device=dev)
        for s in range(S):
            g = gidx[:, s]
            grads, (lw, sw) = step(params, consts, x_all[g], y_all[g], wts[:, s], cin)
            sgd_step_(params, grads, bufs, sched, None if all_active else active[:, s], lr=sched.lr_at(s))
            lw_sum += lw
            w_sum += sw
        losses = (lw_sum / w_sum.clamp_min(1.0)).tolist()
        outs = []
        for n in params:  # updates in place: params becomes z - z0, sliced per client without copies
            params[n].sub_(z0[n])
        for c, k in enumerate(clients):
            upd = {n: params[n][c] for n in params}
            outs.append(ClientReport(k, upd, len(cohort.rows[c]), losses[c], alg.client_meta(task, k)))
        return outs


def _grid_cells(rows: list[torch.Tensor], batches: list[list[torch.Tensor]], S: int, B: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat [C, S, B] positions and row indices of every real sample: client c's step-s batch ``b`` fills
    cells (c, s, 0..len(b)-1) with ``rows[c][b]``."""
    cells, vals = [], []
    for c, (idx, bs) in enumerate(zip(rows, batches)):
        if not bs:
            continue
        lens = torch.tensor([len(b) for b in bs], dtype=torch.int64)
        flat = torch.cat(bs)
        steps = torch.repeat_interleave(torch.arange(len(bs), dtype=torch.int64), lens)
        within = torch.arange(len(flat), dtype=torch.int64) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)
        cells.append((c * S + steps) * B + within)
        vals.append(idx[flat])
    if not cells:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(cells), torch.cat(vals)

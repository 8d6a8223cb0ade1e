"""The vectorized engine: a whole cohort's local SGD as one batched computation.

Client parameters are stacked along a leading cohort axis and every local step is one call of
``vmap(grad(loss))`` over (params, batch) -- ``torch.func`` turns the per-client matmuls into batched ones.

Unequal client data: client k runs ``steps_k`` local steps with batches of up to B rows. Each chunk's rows are
read once through the data's ``cohort(clients)`` (a view for in-memory data; only those clients' rows for a
store or a generated population) and laid out as a [C, S_max, B_max] grid of row indices with a weight mask:
padding rows get weight 0 (the loss is a weighted mean, so they contribute nothing), and steps past a client's
own count are *inactive* -- its parameters and optimizer state (momentum buffers; Adam's moments and its
per-client step count) are left as they are. This reproduces
per-client training exactly. To keep padding low, clients are bucketed: the cohort is sorted by step count and
processed in chunks of at most ``chunk_size`` clients (which also bounds memory), so each chunk pads only to
its own longest client.

Two cases take a different route to the same numbers: a plain-SGD round of an MLP keeps its large Linear layers
as the broadcast weights plus per-client low-rank factors (``factored``, below: no per-client weight copies, one
autograd backward per step, about 1.4x faster per W1 round on CPU), and a model with convolutions on a CPU trains
client by client (``cpu_conv: loop``), because vmap turns each conv into a grouped conv that is slower there than
a loop over the cohort.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.func import grad, vmap

from fedloom import optim
from fedloom.core.algorithm import LocalSGDAlgorithm
from fedloom.core.types import ClientReport
from fedloom.engine.base import CohortJob, Engine, client_objective, client_start, custom_client_reason, make_forward
from fedloom.engine.sequential import SequentialEngine
from fedloom.models import vmap_unsafe_reason
from fedloom.registry import ENGINES


class VectorizedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunk_size: int = Field(1024, ge=1, description="max clients in one batched computation (memory bound)")
    bucket: bool = Field(True, description="sort the cohort by local step count before chunking (less padding)")
    cpu_conv: Literal["loop", "vmap"] = Field(
        "loop", description="models with convolutions on a CPU: train the cohort client by client (the sequential "
                            "engine's loop; faster there: vmap turns each conv into a grouped conv, measured 0.88 vs "
                            "0.60 s per W2 step) or under vmap anyway")
    factored: Literal["auto", "always", "never"] = Field(
        "auto", description="plain-SGD rounds of an MLP keep a Linear layer's per-client weights as W0 + low-rank "
                            "factors (exact); auto: the layers whose factors are smaller than their weights")


def fallback_reason(algorithm, model) -> str | None:
    """Why a run cannot use the vectorized engine (it then runs on the sequential one), or None."""
    return custom_client_reason(algorithm) or vmap_unsafe_reason(model)


@ENGINES.register("vectorized", VectorizedParams, "torch.func.vmap over the whole cohort (default)")
class VectorizedEngine(Engine):
    name = "vectorized"

    def __init__(self, params: VectorizedParams | None = None):
        self.p = params or VectorizedParams()

    def run(self, task: CohortJob) -> list[ClientReport]:
        if self.p.cpu_conv == "loop" and torch.device(task.device).type == "cpu" and _has_conv(task.model):
            return SequentialEngine().run(task)
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
        # per-client inputs of the objective (e.g. a width mask), stacked along the cohort axis and vmapped
        per_client = [alg.client_inputs(task, k) for k in clients]
        cin = {n: torch.stack([pc[n] for pc in per_client]).to(dev) for n in per_client[0]} if per_client else {}
        plan = (factored_layers(task, x_all, S * B, self.p.factored == "always")
                if self.p.factored != "never" and not cin else None)
        if plan is not None:
            return _factored_chunk(task, clients, cohort, plan, z0, gidx, wts, active, all_active, x_all, y_all)
        params = {n: p.detach().clone(memory_format=torch.contiguous_format) for n, p in z0.items()}
        kept = task.optimizer_states
        # per-client optimizer states stacked along the cohort axis (Adam's step count too: one per client)
        opt = (optim.init_state(params, sched, C) if kept is None
               else optim.stack_states([kept.get(k) for k in clients], params, sched))
        step = vmap(grad(lambda p, c, x, y, w, ci: client_objective(task, forward, {**ctx, **ci})(p, c, x, y, w),
                         has_aux=True))
        lw_sum = torch.zeros(C, device=dev)
        w_sum = torch.zeros(C, device=dev)
        for s in range(S):
            g = gidx[:, s]
            grads, (lw, sw) = step(params, consts, x_all[g], y_all[g], wts[:, s], cin)
            optim.step_(params, grads, opt, sched, None if all_active else active[:, s], lr=sched.lr_at(s))
            lw_sum += lw
            w_sum += sw
        losses = (lw_sum / w_sum.clamp_min(1.0)).tolist()
        if kept is not None:
            for c, k in enumerate(clients):
                kept[k] = optim.unstack_state(opt, c)
        for n in params:  # updates in place: params becomes z - z0, sliced per client without copies
            params[n].sub_(z0[n])
        return _reports(task, clients, cohort, params, losses)


def _reports(task: CohortJob, clients: list[int], cohort, updates: dict[str, torch.Tensor], losses: list[float]
             ) -> list[ClientReport]:
    """One report per client of the chunk: its slice of the stacked ``updates`` (views, no copies)."""
    return [ClientReport(k, {n: u[c] for n, u in updates.items()}, len(cohort.rows[c]), losses[c],
                         task.algorithm.client_meta(task, k)) for c, k in enumerate(clients)]


def _has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


# ------------------------------------------------------------------------------------------ factored Linear layers
# In a round of plain local SGD every client starts from the same broadcast weights W0, and each step changes a
# Linear layer's weights by a rank-B outer product: after t steps W_c = W0 + sum_t' U_t'^T A_t', with A the layer's
# inputs at step t' and U = -lr dL/d(output). So the layer never needs per-client weights: its output at step t
# is A_t W0^T (one dense matmul for the whole cohort, no [C, out, in] copy of the weights) plus the low-rank
# correction (A_t A_t'^T) U_t' over the earlier steps, and autograd carries the gradient through both terms. The
# reported update is one batched product U^T A at the end instead of a weight gradient and an in-place update of
# C weight copies at every step. For an MLP (Linear layers and element-wise activations) the whole cohort then
# trains with plain batched ops and one autograd backward per step -- no vmap, no per-client weight copies for
# the factored layers (a layer whose factors would be larger than its weights keeps per-client weights).
# Exact in real arithmetic: tests/engine/test_factored.py checks 1e-5 against the dense path and the sequential
# engine. Used only where it applies (plain SGD, the data loss itself, one shared starting model, an MLP).

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)


def factored_layers(task: CohortJob, x_all: torch.Tensor, rows: int, force: bool = False) -> list[bool] | None:
    """For each Linear layer of the model, whether it is kept as factors (else per-client weights), when this
    chunk may take the factored MLP path; None when it may not: plain SGD (no momentum, no weight decay, no
    optimizer state), the algorithm's objective is the data loss itself (``local_loss`` not overridden, no
    per-client inputs), one shared starting model, no buffers, and an nn.Sequential of an optional Flatten,
    Linear layers and element-wise activations on flat samples. A layer is factored when its per-client factors
    (``rows`` = steps x batch rows of in + out values) are smaller than its weights, or always with ``force``."""
    alg, sched, model = task.algorithm, task.schedule, task.model
    if (task.reparam is not None or task.per_client_start or task.buffers or task.optimizer_states is not None
            or sched.optimizer != "sgd" or sched.momentum or sched.weight_decay
            or type(alg).local_loss is not LocalSGDAlgorithm.local_loss or not isinstance(model, nn.Sequential)):
        return None
    mods = list(model)
    if mods and isinstance(mods[0], nn.Flatten) and mods[0].start_dim == 1 and mods[0].end_dim == -1:
        mods = mods[1:]
    elif x_all.dim() != 2:
        return None
    plan = []
    for m in mods:
        if isinstance(m, nn.Linear):
            plan.append(force or rows * (m.in_features + m.out_features) < m.in_features * m.out_features)
        elif not isinstance(m, _ELEMENTWISE):
            return None
    return plan if any(plan) else None


def _factored_chunk(task: CohortJob, clients: list[int], cohort, plan: list[bool], z0, gidx, wts, active,
                    all_active: bool, x_all: torch.Tensor, y_all: torch.Tensor) -> list[ClientReport]:
    sched = task.schedule
    assert task.task is not None
    C, S, B = gidx.shape
    layers = [(i, m) for i, m in enumerate(task.model) if not isinstance(m, nn.Flatten)]
    dev, dt = x_all.device, next(iter(z0.values())).dtype
    # per Linear layer: {W0, b0, A (inputs so far), Ut (-lr dL/d(output) so far, transposed), db (bias sum)} when
    # factored, else {"dense": (weight name, bias name)}
    lin: dict[int, dict] = {}
    dense: dict[str, torch.Tensor] = {}  # per-client weights of the non-factored layers, stacked, trained here
    factored = iter(plan)
    for i, m in layers:
        if not isinstance(m, nn.Linear):
            continue
        wn, bn = f"{i}.weight", f"{i}.bias"
        if next(factored):
            lin[i] = {"W0": task.params[wn].detach(), "b0": task.params[bn].detach() if bn in task.params else None,
                      "A": torch.zeros(C, S * B, m.in_features, device=dev, dtype=dt),
                      # U stored transposed ([C, out, rows]): the final U^T A is then a contiguous bmm (2x faster)
                      "Ut": torch.zeros(C, m.out_features, S * B, device=dev, dtype=dt),
                      "db": torch.zeros(C, m.out_features, device=dev, dtype=dt)}
        else:
            lin[i] = {"dense": (wn, bn if bn in task.params else None)}
            for n in (wn, bn):
                if n in task.params:
                    dense[n] = z0[n].clone(memory_format=torch.contiguous_format)
    opt = optim.init_state(dense, sched, C)
    loss_fn = vmap(task.task.weighted_loss)  # the task's per-client weighted loss, for the whole cohort at once
    lw_sum = torch.zeros(C, device=dev)
    w_sum = torch.zeros(C, device=dev)
    for s in range(S):
        g = gidx[:, s]
        h = x_all[g].reshape(C, B, -1)
        for v in dense.values():
            v.requires_grad_(True)
        outs, inputs = [], []
        for i, m in layers:
            if not isinstance(m, nn.Linear):
                h = m(h)
                continue
            L = lin[i]
            if "dense" in L:
                wn, bn = L["dense"]
                h = torch.bmm(h, dense[wn].transpose(1, 2)) + (dense[bn].unsqueeze(1) if bn else 0)
                continue
            a = h
            h = (a.reshape(C * B, -1) @ L["W0"].T).view(C, B, -1)
            if L["b0"] is not None:
                h = h + (L["b0"] + L["db"]).unsqueeze(1)
            if s:
                h = h + torch.bmm(torch.bmm(a, L["A"][:, : s * B].transpose(1, 2)), L["Ut"][:, :, : s * B].transpose(1, 2))
            if not h.requires_grad:  # the first layer's output: made of constants only, differentiated from here
                h.requires_grad_(True)
            inputs.append((i, a.detach()))
            outs.append(h)
        loss, (lw, sw) = loss_fn(h, y_all[g], wts[:, s])
        # client c's loss depends only on its own rows: the gradient of the sum is each client's own gradient
        grads = torch.autograd.grad(loss.sum(), outs + list(dense.values()))
        for v in dense.values():
            v.requires_grad_(False)
        lr = sched.lr_at(s)
        for (i, a), gout in zip(inputs, grads):
            L = lin[i]
            u = gout * (-lr)  # an inactive client's rows have weight 0, so its u is 0 and its layer stays put
            L["A"][:, s * B : (s + 1) * B] = a
            L["Ut"][:, :, s * B : (s + 1) * B] = u.transpose(1, 2)
            if L["b0"] is not None:
                L["db"] += u.sum(1)
        if dense:
            optim.step_(dense, dict(zip(dense, grads[len(outs):])), opt, sched, None if all_active else active[:, s],
                        lr=lr)
        lw_sum += lw.detach()
        w_sum += sw.detach()
    losses = (lw_sum / w_sum.clamp_min(1.0)).tolist()
    upd: dict[str, torch.Tensor] = {}
    for i, L in lin.items():
        if "dense" in L:
            for n in L["dense"]:
                if n is not None:
                    upd[n] = dense[n].sub_(z0[n])
            continue
        upd[f"{i}.weight"] = torch.bmm(L["Ut"], L["A"])
        if L["b0"] is not None:
            upd[f"{i}.bias"] = L["db"]
    return _reports(task, clients, cohort, {n: upd[n] for n in z0}, losses)


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

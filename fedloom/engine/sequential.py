"""The reference engine: one client after another.

Runs any client code. For algorithms whose client work is local SGD on a loss, it takes per-client gradients
with ``torch.func.grad`` on exactly the objective the vectorized engine batches, so the two agree to float
tolerance (tests/engine/test_equivalence.py).
"""

from __future__ import annotations

import torch
from torch.func import grad

from fedloom import optim
from fedloom.core.algorithm import CustomClientAlgorithm, LocalSGDAlgorithm
from fedloom.core.types import ClientReport
from fedloom.engine.base import CohortJob, Engine, client_objective, client_start, make_forward
from fedloom.registry import ENGINES


def local_sgd(task: CohortJob, k: int) -> ClientReport:
    """Client k's local training on the algorithm's functional loss, starting from the broadcast model, with the
    schedule's optimizer (:mod:`fedloom.optim`; its state restarted, or kept in ``task.optimizer_states``)."""
    alg, sched = task.algorithm, task.schedule
    assert isinstance(alg, LocalSGDAlgorithm)
    forward = make_forward(task.model, task.buffers)
    ctx = {**alg.loss_context(task.params), **alg.client_inputs(task, k)}
    z0, consts = client_start(task, k)
    params = {n: p.detach().clone() for n, p in z0.items()}
    kept = task.optimizer_states.get(k) if task.optimizer_states is not None else None
    state = optim.clone_state(kept) if kept is not None else optim.init_state(params, sched)
    gfn = grad(client_objective(task, forward, ctx), has_aux=True)
    cohort = task.data.cohort([k])  # client k's rows (in memory: a view of the training set)
    idx, x_all, y_all = cohort.rows[0], cohort.x, cohort.y
    lw_sum = torch.zeros((), device=task.device)
    w_sum = torch.zeros((), device=task.device)
    for s, b in enumerate(task.batches(k)):
        g_idx = idx[b]
        x = x_all[g_idx].to(task.device, non_blocking=True)
        y = y_all[g_idx].to(task.device, non_blocking=True)
        w = torch.ones(len(b), device=task.device)
        grads, (lw, sw) = gfn(params, consts, x, y, w)
        optim.step_(params, grads, state, sched, lr=sched.lr_at(s))
        lw_sum += lw
        w_sum += sw
    if task.optimizer_states is not None:
        task.optimizer_states[k] = state
    update = {n: params[n] - z0[n] for n in params}
    loss = float(lw_sum / w_sum.clamp_min(1.0))
    return ClientReport(k, update, len(idx), loss, alg.client_meta(task, k))


@ENGINES.register("sequential", None, "reference engine: clients one after another; runs any client code")
class SequentialEngine(Engine):
    name = "sequential"

    def __init__(self, params=None):
        self.p = params

    def run(self, task: CohortJob) -> list[ClientReport]:
        alg = task.algorithm
        if isinstance(alg, CustomClientAlgorithm):
            return [alg.train_client(task, k) for k in task.clients]
        return [local_sgd(task, k) for k in task.clients]

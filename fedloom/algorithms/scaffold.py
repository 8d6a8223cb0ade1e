"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020).

The algorithm that shows fedloom's *stateful clients*: every client keeps a control variate c_i between rounds
(kept by the client runtime in ``job.client_states``, saved in checkpoints), the server keeps c.

Round (the paper's Algorithm 1, option II for the client control variate):

* server -> sampled clients: the model x and the server control variate c (``broadcast``);
* client i: y <- x; K local steps y <- y - eta_l (g_i(y) - c_i + c). This is local SGD on the loss
  f_i(y) + <y, c - c_i>, whose gradient is g_i(y) + c - c_i, so both engines run it unchanged (the per-client
  correction c - c_i reaches the vmapped loss through ``client_inputs``);
* client i: c_i+ = c_i - c + (x - y) / (K eta_l); it keeps c_i+ and uploads (dy = y - x, dc = c_i+ - c_i);
* server: x <- x + eta_g mean(dy) (the configured server optimizer; ``sgd`` with lr = eta_g), and
  c <- c + |S| / N * mean(dc).

With full participation and uniform weights, c stays the mean of the clients' c_i (tested).
Uploads and broadcasts are twice FedAvg's size (the control variates travel too), as in the paper.
K is each client's own number of local steps (``LocalSchedule.num_steps``), eta_l the client lr. With
momentum or weight decay the option-II estimate (x - y) / (K eta_l) is the average *applied* step direction,
not the average gradient; the paper assumes plain SGD.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from pydantic import Field

from fedloom.core.algorithm import AlgorithmParams, LocalSGDAlgorithm, Traits
from fedloom.core.types import ClientReport, Params
from fedloom.registry import ALGORITHMS

C = "scaffold.c."  # prefix of control-variate entries in messages
CORR = "scaffold.corr."  # prefix of the per-client correction c - c_i in the local objective's inputs


class ScaffoldParams(AlgorithmParams):
    weighting: str = Field("uniform", pattern="^(samples|uniform)$",
                           description="client weights in the means (the paper: uniform)")


@ALGORITHMS.register("scaffold", ScaffoldParams, "SCAFFOLD: control variates correct client drift (stateful clients)")
class Scaffold(LocalSGDAlgorithm):
    traits = Traits(sgd_only="its option-II control variate (x - y) / (K eta_l) is SGD's average gradient")

    def bind(self, ctx) -> None:
        self.num_clients = ctx.num_clients

    def init_state(self, ctx) -> dict[str, Any]:
        return {"c": {k: torch.zeros(s, dtype=dt, device=ctx.device) for k, (s, dt) in ctx.param_spec.items()}}

    # -- what travels --------------------------------------------------------------------------------
    def broadcast(self, state) -> Params:
        return {**state.params, **{C + k: v for k, v in state.algo_state["c"].items()}}

    def upload_spec(self, model_spec):
        return {**model_spec, **{C + k: v for k, v in model_spec.items()}}

    # -- client side ---------------------------------------------------------------------------------
    def _c_i(self, job, k: int) -> Params:
        """Client k's control variate (0 before its first round)."""
        st = job.client_states.get(k)
        return st["c"] if st is not None else {n: torch.zeros_like(p) for n, p in job.params.items()}

    def client_inputs(self, job, k: int) -> dict[str, torch.Tensor]:
        c_i = self._c_i(job, k)
        return {CORR + n: job.extras[C + n] - c_i[n].to(job.extras[C + n].device) for n in job.params}

    def local_loss(self, data_loss, params, ctx):
        loss, aux = data_loss(params)
        corr = sum((params[n] * ctx[CORR + n]).sum() for n in params)  # gradient: + (c - c_i)
        return loss + corr, aux

    def client_finish(self, job, report: ClientReport) -> ClientReport:
        k = report.client
        steps = job.schedule.num_steps(job.data.client_size(k))
        if steps == 0:  # no data, no step: keep c_i, send dc = 0
            dc = {n: torch.zeros_like(v) for n, v in report.update.items()}
        else:
            c, c_i = {n: job.extras[C + n] for n in job.params}, self._c_i(job, k)
            # c_i+ - c_i = -c + (x - y) / (K eta_l) = -c - dy / (K eta_l)
            scale = 1.0 / job.schedule.lr_sum(steps)  # K eta_l (the sum of the step sizes under a schedule)
            dc = {n: -c[n] - report.update[n] * scale for n in job.params}
            job.client_states[k] = {"c": {n: (c_i[n].to(dc[n].device) + dc[n]).detach().clone() for n in dc}}
        return replace(report, update={**report.update, **{C + n: v for n, v in dc.items()}})

    # -- server side ---------------------------------------------------------------------------------
    def server_step(self, ctx, state, agg):
        model = {k: v for k, v in agg.update.items() if not k.startswith(C)}
        opt_state = ctx.server_optimizer.step(state.params, model, state.opt_state)
        frac = len(agg.reports) / self.num_clients  # |S| / N
        c = state.algo_state["c"]
        for k in c:
            c[k].add_(agg.update[C + k], alpha=frac)
        norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in c.values())))
        return replace(state, opt_state=opt_state), {"control_variate_norm": norm}

"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020).

The algorithm that shows fedloom's *stateful clients*: every client keeps a control variate c_i between rounds
(kept by the simulation in ``task.client_states``, saved in checkpoints), the server keeps c.

Round (the paper's Algorithm 1, option II for the client control variate):

* server -> sampled clients: the model x and the server control variate c (``broadcast_extras``);
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

from typing import Any

import torch
from pydantic import Field

from fedloom.algorithms.base import Algorithm, AlgorithmParams, ClientOutput, Params
from fedloom.registry import ALGORITHMS

C = "scaffold.c."  # prefix of control-variate entries in messages
CORR = "scaffold.corr."  # prefix of the per-client correction c - c_i in the local objective's inputs


class ScaffoldParams(AlgorithmParams):
    weighting: str = Field("uniform", pattern="^(samples|uniform)$",
                           description="client weights in the means (the paper: uniform)")


@ALGORITHMS.register("scaffold", ScaffoldParams, "SCAFFOLD: control variates correct client drift (stateful clients)")
class Scaffold(Algorithm):
    def bind(self, sim: Any) -> None:
        self.num_clients = sim.data.num_clients
        st = sim.state
        if "c" not in st.algo_state:
            st.algo_state["c"] = {k: torch.zeros_like(v) for k, v in st.params.items()}

    # -- what travels --------------------------------------------------------------------------------
    def broadcast_extras(self, state) -> Params:
        return {C + k: v for k, v in state.algo_state["c"].items()}

    def upload_spec(self, expected):
        return {**expected, **{C + k: v for k, v in expected.items()}}

    # -- client side ---------------------------------------------------------------------------------
    def _c_i(self, task, k: int) -> Params:
        """Client k's control variate (0 before its first round)."""
        st = task.client_states.get(k)
        return st["c"] if st is not None else {n: torch.zeros_like(p) for n, p in task.params.items()}

    def client_inputs(self, task, k: int) -> dict[str, torch.Tensor]:
        c_i = self._c_i(task, k)
        return {CORR + n: task.extras[C + n] - c_i[n].to(task.extras[C + n].device) for n in task.params}

    def client_loss(self, forward, params, x, y, w, ctx):
        loss, aux = super().client_loss(forward, params, x, y, w, ctx)
        corr = sum((params[n] * ctx[CORR + n]).sum() for n in params)  # gradient: + (c - c_i)
        return loss + corr, aux

    def client_finish(self, task, k: int, out: ClientOutput) -> ClientOutput:
        steps = task.schedule.num_steps(len(task.data.client_indices[k]))
        if steps == 0:  # no data, no step: keep c_i, send dc = 0
            dc = {n: torch.zeros_like(v) for n, v in out.update.items()}
        else:
            c, c_i = {n: task.extras[C + n] for n in task.params}, self._c_i(task, k)
            # c_i+ - c_i = -c + (x - y) / (K eta_l) = -c - dy / (K eta_l)
            scale = 1.0 / task.schedule.lr_sum(steps)  # K eta_l (the sum of the step sizes under a schedule)
            dc = {n: -c[n] - out.update[n] * scale for n in task.params}
            task.client_states[k] = {"c": {n: (c_i[n].to(dc[n].device) + dc[n]).detach().clone() for n in dc}}
        return ClientOutput({**out.update, **{C + n: v for n, v in dc.items()}}, out.num_samples, out.train_loss,
                            out.meta)

    # -- server side ---------------------------------------------------------------------------------
    def server_update(self, state, agg: Params, server_opt) -> dict[str, Any]:
        model = {k: v for k, v in agg.items() if not k.startswith(C)}
        state.opt_state = server_opt.step(state.params, model, state.opt_state)
        frac = state.reported / self.num_clients  # |S| / N
        c = state.algo_state["c"]
        for k in c:
            c[k].add_(agg[C + k], alpha=frac)
        return {"control_variate_norm": float(torch.sqrt(sum((v.double() ** 2).sum() for v in c.values())))}

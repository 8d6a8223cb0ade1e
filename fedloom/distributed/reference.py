"""A plain single-process reference of the local SGD family: K workers held in one process, in a loop.

Reads top to bottom with Stich 2019 / Lin et al. 2020's notation; it shares only the schedule
(:func:`sync_kind`, :func:`lr_at`) and the data stream (:class:`BatchStream`) with the torch.distributed
trainer, and is what the equivalence tests compare the multi-process runs against. It is also the fast path
for the convex benchmark (many K x H runs of a tiny model, no process start-up).

    x_{t+1/2}^k = x_t^k - eta_t g_t^k                         (local step, worker k; momentum buffer local)
    x_{t+1}^k   = mean_{j in G(k)} x_{t+1/2}^j  if t+1 in I_T  (G = all workers, or k's group)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedloom.distributed.local_sgd import (
    BatchStream,
    LocalSGDConfig,
    build,
    evaluate,
    lr_at,
    sync_kind,
)


def simulate(cfg: LocalSGDConfig, world_size: int, *, loss_fn=None, on_step=None) -> dict[str, Any]:
    """Run ``cfg`` with ``world_size`` simulated workers; returns the final averaged model and counts.

    ``on_step(t, avg_params)`` is called after every step with the workers' average (the x_bar_t of Stich's
    analysis) when given; returning True stops the run there. ``loss_fn(model, x, y)`` replaces mean
    cross-entropy.
    """
    cfg.check_world(world_size)
    K, dev = world_size, torch.device("cpu")
    src, model0 = build(cfg, dev)
    workers = [model0] + [_clone(model0) for _ in range(K - 1)]
    opts = [torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                            weight_decay=cfg.weight_decay) for m in workers]
    streams = [BatchStream(cfg, src.train_y, k, K) for k in range(K)]
    gs = cfg.group_size or K
    groups = [list(range(s, s + gs)) for s in range(0, K, gs)]
    counts = {"grad": 0, "group": 0, "global": 0}
    loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y))
    for t in range(1, cfg.steps + 1):
        kind = sync_kind(cfg, t)
        for m, opt, st in zip(workers, opts, streams):
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, t)
            idx = st.indices(t)
            opt.zero_grad(set_to_none=False)
            loss_fn(m, src.train_x[idx], src.train_y[idx]).backward()
        if kind == "grad":  # mini-batch SGD: every worker applies the mean gradient
            _average([[p.grad for p in m.parameters()] for m in workers])
        for opt in opts:
            opt.step()
        if kind == "global":
            _average([list(m.parameters()) for m in workers])
        elif kind == "group":
            for grp in groups:
                _average([list(workers[k].parameters()) for k in grp])
        if kind:
            counts[kind] += 1
        if on_step is not None and on_step(t, _mean_params(workers)) is True:  # early stop (benchmarks)
            break
    final = _mean_params(workers)
    with torch.no_grad():
        for p, v in zip(model0.parameters(), final):
            p.copy_(v)
    loss, acc = evaluate(model0, src.test_x, src.test_y, dev)
    return {"params": {k: v.detach().clone() for k, v in model0.state_dict().items()}, "counts": counts,
            "final": {"step": cfg.steps, "test_loss": loss, "test_accuracy": acc}}


def _clone(m):
    import copy

    return copy.deepcopy(m)


@torch.no_grad()
def _average(tensor_lists: list[list[torch.Tensor]]) -> None:
    for ts in zip(*tensor_lists):
        mean = torch.stack(ts).mean(0)
        for t in ts:
            t.copy_(mean)


@torch.no_grad()
def _mean_params(workers) -> list[torch.Tensor]:
    return [torch.stack(ps).mean(0) for ps in zip(*(list(m.parameters()) for m in workers))]

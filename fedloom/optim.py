"""Client optimizer steps on parameter dicts, shared by every engine and by custom client code (FD).

Functional and in place, so the vectorized engine applies them to a whole cohort's stacked parameters at once.
"""

from __future__ import annotations

import torch

from fedloom.core.types import LocalSchedule, Params


def sgd_step_(params: Params, grads: Params, bufs: Params | None, sched: LocalSchedule,
              active: torch.Tensor | None = None, lr: float | None = None) -> None:
    """One SGD step in place (PyTorch's SGD semantics: buf <- mu buf + g; p <- p - lr buf).

    ``active`` (shape [C], vectorized engine) masks clients that have no batch at this step: their
    parameters and momentum buffers are left untouched. ``lr`` overrides ``sched.lr`` (a schedule's step).
    """
    lr = sched.lr if lr is None else lr
    for k, p in params.items():
        g = grads[k]
        if sched.weight_decay:
            g = g.add(p, alpha=sched.weight_decay)
        if bufs is not None:
            b = bufs[k]
            if active is None:
                b.mul_(sched.momentum).add_(g)
            else:
                a = active.view(-1, *([1] * (b.dim() - 1)))
                b.copy_(torch.where(a, b * sched.momentum + g, b))
            g = b
        if active is None:
            p.sub_(g, alpha=lr)
        else:
            p.sub_(g * active.view(-1, *([1] * (p.dim() - 1))).to(p.dtype), alpha=lr)


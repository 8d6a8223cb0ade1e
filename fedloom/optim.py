"""Client optimizer steps on parameter dicts, shared by every engine and by custom client code (FD).

Functional and in place, so the vectorized engine applies them to a whole cohort's stacked parameters at once.
The math is written once here and follows PyTorch's semantics:

* ``sgd`` -- ``torch.optim.SGD`` (buf <- mu buf + g; p <- p - lr buf; weight decay added to the gradient);
* ``adam`` -- ``torch.optim.Adam`` (bias-corrected moments; weight decay added to the gradient, L2);
* ``adamw`` -- ``torch.optim.AdamW`` (the same with decoupled decay: p <- p (1 - lr wd) before the step).

An optimizer state (:func:`init_state`) is a dict: ``{"momentum_buffer": Params}`` for sgd with momentum, ``{}``
for plain sgd, ``{"step": t, "exp_avg": Params, "exp_avg_sq": Params}`` for adam/adamw. In the vectorized engine
every tensor has a leading cohort axis, ``step`` included (shape [C]: each client counts its own steps, so a
client's bias correction is its own even when persisted states of different ages are stacked together); one
client's state has a 0-d ``step``. ``active`` ([C] booleans) masks clients that have no batch at a step: their
parameters and state are left untouched, ``step`` too.
"""

from __future__ import annotations

from typing import Any

import torch

from fedloom.core.types import LocalSchedule, Params

OPTIMIZERS = ("sgd", "adam", "adamw")

OptState = dict[str, Any]


def init_state(params: Params, sched: LocalSchedule, cohort: int | None = None) -> OptState:
    """A fresh optimizer state for ``params`` (stacked along a leading cohort axis of size ``cohort``, or one
    client's parameters when ``cohort`` is None)."""
    if sched.optimizer == "sgd":
        return {"momentum_buffer": {n: torch.zeros_like(p) for n, p in params.items()}} if sched.momentum else {}
    if sched.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown client optimizer {sched.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    dev = next(iter(params.values())).device if params else torch.device("cpu")
    shape = () if cohort is None else (cohort,)
    return {"step": torch.zeros(shape, dtype=torch.float64, device=dev),
            "exp_avg": {n: torch.zeros_like(p) for n, p in params.items()},
            "exp_avg_sq": {n: torch.zeros_like(p) for n, p in params.items()}}


def clone_state(state: OptState) -> OptState:
    """A detached deep copy of a state (what a client keeps between rounds)."""
    return {k: ({n: t.detach().clone() for n, t in v.items()} if isinstance(v, dict) else v.detach().clone())
            for k, v in state.items()}


def stack_states(states: list[OptState | None], params: Params, sched: LocalSchedule) -> OptState:
    """The stacked state of a chunk of clients: client c's kept state (one client's, as :func:`unstack_state`
    returns it) or a fresh one where ``states[c]`` is None. ``params`` are the chunk's stacked parameters."""
    fresh = init_state(params, sched, len(states))
    for c, st in enumerate(states):
        if st is None:
            continue
        for k, v in fresh.items():
            if isinstance(v, dict):
                for n, t in v.items():
                    t[c].copy_(st[k][n])
            else:
                v[c].copy_(st[k])
    return fresh


def unstack_state(state: OptState, c: int) -> OptState:
    """Client ``c``'s own state (copied) out of a stacked one."""
    return {k: ({n: t[c].detach().clone() for n, t in v.items()} if isinstance(v, dict) else v[c].detach().clone())
            for k, v in state.items()}


def step_(params: Params, grads: Params, state: OptState, sched: LocalSchedule,
          active: torch.Tensor | None = None, lr: float | None = None) -> None:
    """One step of ``sched.optimizer`` in place on ``params`` and ``state``; ``lr`` overrides ``sched.lr``."""
    if sched.optimizer == "sgd":
        sgd_step_(params, grads, state.get("momentum_buffer"), sched, active, lr)
    else:
        adam_step_(params, grads, state, sched, active, lr)


def _per_client(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-client value (0-d, or [C]) shaped to broadcast against a (stacked) tensor ``like``."""
    return t if t.dim() == 0 else t.view(-1, *([1] * (like.dim() - 1)))


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


def adam_step_(params: Params, grads: Params, state: OptState, sched: LocalSchedule,
               active: torch.Tensor | None = None, lr: float | None = None) -> None:
    """One Adam (``sched.optimizer == "adam"``) or AdamW (``"adamw"``) step in place, as ``torch.optim``'s:

        t <- t + 1;  g <- g + wd p (adam)  or  p <- p (1 - lr wd) (adamw)
        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    The bias corrections are computed per client (``state["step"]`` is 0-d or [C]) in float64, as PyTorch
    computes them from a Python float. Inactive clients (``active`` False) keep p, m, v and t."""
    lr = sched.lr if lr is None else lr
    b1, b2 = sched.betas
    wd, decoupled = sched.weight_decay, sched.optimizer == "adamw"
    step = state["step"]
    if active is None:
        step.add_(1)
    else:
        step.add_(active.to(step.dtype))
    t = step.clamp_min(1)  # an inactive client that never stepped: its (unused) corrections stay finite
    bc1 = 1 - b1**t
    step_size = lr / bc1                      # float64, per client
    bc2_sqrt = (1 - b2**t).sqrt()
    m_all, v_all = state["exp_avg"], state["exp_avg_sq"]
    for k, p in params.items():
        g, m, v = grads[k], m_all[k], v_all[k]
        if wd and not decoupled:
            g = g.add(p, alpha=wd)
        ss = _per_client(step_size.to(p.dtype), p)
        b2s = _per_client(bc2_sqrt.to(p.dtype), p)
        if active is None:
            if wd and decoupled:
                p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.sub_(ss * m / (v.sqrt() / b2s).add_(sched.eps))
        else:
            a = active.view(-1, *([1] * (p.dim() - 1)))
            q = p * (1 - lr * wd) if wd and decoupled else p
            m.copy_(torch.where(a, m.lerp(g, 1 - b1), m))
            v.copy_(torch.where(a, v.mul(b2).addcmul_(g, g, value=1 - b2), v))
            p.copy_(torch.where(a, q - ss * m / (v.sqrt() / b2s).add_(sched.eps), p))

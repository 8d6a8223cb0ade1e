"""Collectives with communication accounting and an optional simulated slow link.

Every collective fedloom issues in data-parallel training goes through :class:`Comm`, which

* counts it (``allreduces``) and the bytes it moves: ``payload_bytes`` is the size of the tensor each rank
  contributes; ``wire_bytes`` is what one rank sends under a ring all-reduce, ``2 (g-1)/g * payload`` for a
  group of ``g`` ranks (reduce-scatter + all-gather), the usual cost model;
* optionally sleeps ``latency_s + wire_bytes / bandwidth_Bps`` per collective (a simulated slow link), so the
  wall-time benefit of communicating every H steps instead of every step is visible on one machine.

Counters are plain state on the object and are returned with the training result (nothing global).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class CommStats:
    """Collective counts and bytes, in total and split by kind (``grad``, ``group``, ``global``)."""

    allreduces: int = 0
    payload_bytes: int = 0
    wire_bytes: float = 0.0
    link_sleep_s: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, payload: int, group_size: int, sleep: float) -> None:
        self.allreduces += 1
        self.payload_bytes += payload
        self.wire_bytes += 2.0 * (group_size - 1) / max(group_size, 1) * payload
        self.link_sleep_s += sleep
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def as_dict(self) -> dict:
        return {"allreduces": self.allreduces, "payload_bytes": self.payload_bytes,
                "wire_bytes": self.wire_bytes, "link_sleep_s": self.link_sleep_s, "by_kind": dict(self.by_kind)}


class Comm:
    """Averaging all-reduces on a process group, counted, with an optional simulated link.

    ``latency_s`` and ``bandwidth_Bps`` (bytes/second, ``None`` = infinite) model a link: each collective
    sleeps ``latency_s + wire_bytes / bandwidth_Bps``.
    """

    def __init__(self, latency_s: float = 0.0, bandwidth_Bps: float | None = None):
        self.latency_s = latency_s
        self.bandwidth_Bps = bandwidth_Bps
        self.stats = CommStats()

    def _link(self, payload: int, group_size: int) -> float:
        wire = 2.0 * (group_size - 1) / max(group_size, 1) * payload
        t = self.latency_s + (wire / self.bandwidth_Bps if self.bandwidth_Bps else 0.0)
        if t > 0:
            time.sleep(t)
        return t

    def average_(self, tensors: list[torch.Tensor], kind: str, group=None) -> None:
        """Replace each tensor (in place) by its mean over ``group``: one flat all-reduce."""
        if group is not None and dist.get_rank(group) < 0:  # not a member of this group
            return
        g = dist.get_world_size(group)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, group=group)
        flat.div_(g)
        off = 0
        for t in tensors:
            t.copy_(flat[off : off + t.numel()].view_as(t))
            off += t.numel()
        payload = flat.numel() * flat.element_size()
        self.stats.add(kind, payload, g, self._link(payload, g))

    def record(self, kind: str, payload: int, group_size: int) -> None:
        """Count a collective issued by someone else (PyTorch's model averagers) and apply the link model."""
        self.stats.add(kind, payload, group_size, self._link(payload, group_size))

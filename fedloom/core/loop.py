"""The round loop -- the one place where a federated round happens (Kairouz et al.'s template).

    server: 1 sample a cohort -> 2 broadcast ................... 5 validate + aggregate -> 6 apply, evaluate, record
    client:                         3 local work -> 4 client pipeline -> bytes

:func:`run_round` reads as those six steps. The server side (:class:`Server`) and the client side (a
:class:`ClientRuntime`: the in-process simulation, or networked clients) meet only in bytes: the broadcast
and the uploads are serialized messages, and every byte count in the record is their length. The loop imports
interfaces only -- no algorithm, codec, crypto, data or model module; :func:`fedloom.build.build_run` composes
a run from a config.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

from fedloom import wire
from fedloom.core.aggregate import Aggregator
from fedloom.core.algorithm import Algorithm
from fedloom.core.pipeline import ServerPipeline
from fedloom.core.types import Aggregate, Broadcast, Bytes, ClientReport, RunContext, ServerState

log = logging.getLogger("fedloom")


class CohortPlan(Protocol):
    """Who was sampled, who reports, who dropped out and why (:mod:`fedloom.system`)."""

    sampled: list[int]
    reporting: list[int]
    dropped: dict[int, str]


class Planner(Protocol):
    def plan(self, rnd: int, msg_bytes: int) -> CohortPlan: ...


class ClientRuntime(Protocol):
    """Steps 3-4 for a cohort, wherever its clients live: the broadcast in, one upload per client that replied
    out (a networked client may not reply in time: it is recorded as dropped)."""

    def run(self, rnd: int, broadcast: Broadcast, clients: Sequence[int]) -> list[tuple[int, Bytes]]: ...

    def round_metrics(self) -> dict[str, Any]:
        """The runtime's own measurements of the last round (e.g. transport bytes, per-client seconds)."""
        ...

    # Optional: ``failures() -> Mapping[int, str]``, the clients of the last round whose own pipeline failed
    # (e.g. a non-finite update they cannot encrypt), so they sent nothing, with the reason. The loop records
    # them as rejected; a runtime without it reports such clients as not replying (dropped).


class Server:
    """The server side of a round: steps 1, 2, 5 and 6. It sees clients only through their messages."""

    def __init__(self, ctx: RunContext, algorithm: Algorithm, planner: Planner, pipeline: ServerPipeline,
                 aggregator: Aggregator, eval_every: int = 1,
                 round_settings: Callable[[], dict[str, Any]] | None = None):
        self.ctx, self.algorithm, self.planner = ctx, algorithm, planner
        self.pipeline, self.aggregator, self.eval_every = pipeline, aggregator, eval_every
        self.round_settings = round_settings  # server-set values clients need (local DP's current clip norm)

    def shared_message(self, state: ServerState, rnd: int) -> Bytes:
        """The one message every sampled client receives (b"" when nothing is shared, e.g. FD). A bytearray:
        the in-process runtime decodes it without a copy."""
        shared = self.algorithm.broadcast(state)
        meta = {"round": rnd, **(self.round_settings() if self.round_settings is not None else {})}
        return wire.encode(shared, meta) if shared else b""

    def broadcast(self, state: ServerState, rnd: int, shared: Bytes, clients: Sequence[int]) -> Broadcast:
        """Step 2: the shared message and each sampled client's personal message (if the algorithm has one)."""
        personal: dict[int, Bytes] = {}
        for k in clients:
            mine = self.algorithm.personal(state, k)
            if mine:
                personal[k] = wire.encode(mine, {"round": rnd, "client": k})
        return Broadcast(shared, personal)

    def receive(self, rnd: int, uploads: Sequence[tuple[int, Bytes]]) -> tuple[list[ClientReport], list[dict]]:
        """Step 5a: decode and validate each message on its own; a bad one rejects that client only."""
        reports, rejected = [], []
        for k, msg in uploads:
            try:
                reports.append(self.pipeline.receive(k, msg))
            except wire.MessageError as e:
                log.warning("round %d: rejected update from client %d: %s", rnd, k, e)
                rejected.append({"client": k, "reason": str(e)})
        return reports, rejected

    def apply(self, state: ServerState, rnd: int, agg: Aggregate) -> tuple[ServerState, dict[str, Any]]:
        """Step 6a: the algorithm's server step (nothing to apply if no update was accepted)."""
        state = replace(state, round=rnd)
        if agg.update is None:
            return state, {}
        return self.algorithm.server_step(self.ctx, state, agg)

    def evaluate(self, state: ServerState, rnd: int) -> dict[str, Any]:
        """Step 6b: the algorithm's metrics on evaluation rounds (every ``eval_every`` and the last)."""
        if rnd % self.eval_every == 0 or rnd == self.ctx.rounds:
            return self.algorithm.evaluate(self.ctx, state)
        return {}


def train_loss(reports: Sequence[ClientReport]) -> float | None:
    """The sample-weighted mean of the accepted clients' reported train losses."""
    n = sum(float(r.num_samples) for r in reports)
    return sum(float(r.train_loss or 0.0) * float(r.num_samples) for r in reports) / n if n else None


def run_round(server: Server, clients: ClientRuntime, state: ServerState, rnd: int
              ) -> tuple[ServerState, dict[str, Any]]:
    """One federated round; returns the new server state and the round's record."""
    t0 = time.perf_counter()
    # 1. sample a cohort (who drops out or straggles never sends an update); the broadcast's size enters the
    #    planner's straggler model, so the shared message is made first
    shared = server.shared_message(state, rnd)
    plan = server.planner.plan(rnd, len(shared))
    # 2. broadcast to every sampled client
    down = server.broadcast(state, rnd, shared, plan.sampled)
    # 3-4. client work and the client pipeline, in the clients' runtime: bytes in, bytes out
    uploads = clients.run(rnd, down, plan.reporting)
    # 5. validate each message, then aggregate the accepted reports
    reports, rejected = server.receive(rnd, uploads)
    failures_of = getattr(clients, "failures", None)  # optional (see ClientRuntime)
    failures: dict[int, str] = dict(failures_of()) if failures_of is not None else {}
    rejected += [{"client": k, "reason": f"failed on the client: {why}"} for k, why in sorted(failures.items())]
    if reports and not any(r.num_samples for r in reports):  # no weight anywhere: nothing to average
        rejected += [{"client": r.client, "reason": "reported 0 samples, as did every accepted client of the round"}
                     for r in reports]
        reports = []
    agg = server.aggregator.aggregate(rnd, reports, state)
    # 6. apply, evaluate, record
    state, step_metrics = server.apply(state, rnd, agg)
    rec: dict[str, Any] = {"round": rnd, "test_accuracy": None, "test_loss": None, **agg.metrics, **step_metrics,
                           "train_loss": train_loss(agg.reports), **server.evaluate(state, rnd)}
    rejected += [dict(r) for r in agg.rejected]
    replied = {k for k, _ in uploads}
    refused = {r["client"] for r in rejected} | (set(plan.reporting) - replied)
    dropped = {**plan.dropped, **{c: "no reply" for c in plan.reporting if c not in replied and c not in failures}}
    rec.update(bytes_up=sum(len(m) for _, m in uploads), bytes_down=down.bytes_for(plan.sampled),
               clients=len(plan.reporting), reported=len(agg.reports), rejected=rejected,
               sampled_ids=list(plan.sampled), reported_ids=[c for c in plan.reporting if c not in refused],
               dropped=[{"client": c, "reason": r} for c, r in sorted(dropped.items())],
               **clients.round_metrics(), seconds=time.perf_counter() - t0)
    return state, rec

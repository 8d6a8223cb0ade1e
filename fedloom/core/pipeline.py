"""The client pipeline (step 4) and its server-side inverse (step 5a): where a report becomes bytes and back.

A :class:`ClientStage` transforms one client's report on the client (attack simulation, local DP, an update
codec chain) and, where it changes the representation, undoes that on the server; stages run in order on the
client and in reverse on the server (optax's ``chain``; pfl's ``for p in postprocessors[::-1]``). Each stage
declares what it emits (:meth:`ClientStage.out_spec`) and may keep per-client state (:meth:`ClientStage.init`,
returned by :meth:`ClientStage.client`), which the runtime keeps and checkpoints. The last step is an
:class:`Encoder`: plain tensors (:class:`PlainEncoder`, :mod:`fedloom.wire`) or Paillier ciphertexts
(:mod:`fedloom.crypto.secagg`).

On the server every message is untrusted input: :meth:`ServerPipeline.receive` decodes it, undoes the stages
and validates the whole report (entries, finiteness, the claimed client id, the sample count against what the
client can have, a finite train loss, finite metadata, the algorithm's own metadata) before anything uses it;
a bad message raises :class:`~fedloom.wire.MessageError` and rejects that client only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch

from fedloom import wire
from fedloom.core.aggregate import update_norm
from fedloom.core.types import Bytes, ClientReport, ParamSpec, RoundInfo


class ClientStage(Protocol):
    """One step of the client pipeline."""

    name: str

    def init(self, client: int) -> Any:
        """Client ``client``'s initial stage state (None for a stateless stage)."""
        ...

    def client(self, report: ClientReport, state: Any, info: RoundInfo) -> tuple[ClientReport, Any]:
        """On the client: the transformed report and the stage's new state."""
        ...

    def server(self, report: ClientReport) -> ClientReport:
        """On the server: undo :meth:`client`'s change of representation (identity for most stages). Raise
        :class:`~fedloom.wire.MessageError` for input that cannot have come from an honest client."""
        ...

    def out_spec(self, spec: ParamSpec) -> ParamSpec:
        """The entries this stage emits, given those it receives."""
        ...


class Encoder(Protocol):
    """The pipeline's last step: a report to bytes (client) and bytes to a report (server, validated)."""

    def wire_spec(self, spec: ParamSpec) -> ParamSpec: ...

    def encode(self, report: ClientReport, info: RoundInfo) -> Bytes: ...

    def decode(self, client: int, msg: Bytes, spec: ParamSpec) -> ClientReport: ...


def report_meta(report: ClientReport) -> dict[str, Any]:
    """The JSON header of an upload: who, how many samples, the train loss, then the report's own meta."""
    return {"client": report.client, "num_samples": report.num_samples, "train_loss": report.train_loss,
            **report.meta}


def report_from(client: int, tensors: dict[str, torch.Tensor], meta: Mapping[str, Any], payload: Any = None
                ) -> ClientReport:
    """A server-side report from a decoded message header; the claimed sender must be ``client`` (the other
    fields are validated by :class:`ServerPipeline`)."""
    claimed = meta.get("client", client)
    if claimed != client:
        raise wire.MessageError(f"message claims to be from client {claimed}")
    own = {k: v for k, v in meta.items() if k not in ("client", "num_samples", "train_loss")}
    return ClientReport(client, tensors, meta.get("num_samples"), meta.get("train_loss"),  # type: ignore[arg-type]
                        own, payload)


class PlainEncoder:
    """Tensors on the wire as they are (:mod:`fedloom.wire`)."""

    def wire_spec(self, spec: ParamSpec) -> ParamSpec:
        return spec

    def encode(self, report: ClientReport, info: RoundInfo) -> Bytes:
        return wire.encode(report.update, report_meta(report))

    def decode(self, client: int, msg: Bytes, spec: ParamSpec) -> ClientReport:
        m = wire.decode(msg, spec)
        return report_from(client, m.tensors, m.meta)


class ClientPipeline:
    """Stages in order, then the encoder: what a client does to its report before it leaves."""

    def __init__(self, stages: Sequence[ClientStage], encoder: Encoder):
        self.stages = list(stages)
        self.encoder = encoder

    def run(self, report: ClientReport, states: MutableMapping[str, Any], info: RoundInfo) -> Bytes:
        """``states`` is this client's stage states by stage name (updated in place: the runtime's store)."""
        for st in self.stages:
            prev = states[st.name] if st.name in states else st.init(report.client)
            report, new = st.client(report, prev, info)
            if new is not None:
                states[st.name] = new
        return self.encoder.encode(report, info)

    def wire_spec(self, upload: ParamSpec) -> ParamSpec:
        spec = upload
        for st in self.stages:
            spec = st.out_spec(spec)
        return self.encoder.wire_spec(spec)


def _finite(t: torch.Tensor) -> bool:
    # fast path: a sum is finite only if every element is (NaN/Inf propagate); full scan otherwise
    return not t.is_floating_point() or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _non_finite(value: Any, path: str) -> str | None:
    """The dotted path of the first non-finite float in JSON-like ``value`` (a report's metadata), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        bad = _non_finite(v, f"{path}.{k}")
        if bad is not None:
            return bad
    return None


class ServerPipeline:
    """Step 5a: decode one client's message, undo the stages in reverse, validate the whole report."""

    def __init__(self, stages: Sequence[ClientStage], encoder: Encoder, upload: ParamSpec,
                 check: Callable[[ClientReport], None], device: torch.device,
                 max_samples: Callable[[int], int | None] | None = None):
        self.stages = list(stages)
        self.encoder = encoder
        self.wire = ClientPipeline(stages, encoder).wire_spec(upload)
        self.check = check
        self.device = device
        self.max_samples = max_samples  # client k's largest honest num_samples (its weight's bound); None = any

    def receive(self, client: int, msg: Bytes) -> ClientReport:
        """The validated report of ``client`` (raises :class:`~fedloom.wire.MessageError` on bad input)."""
        rep = self.encoder.decode(client, msg, self.wire)
        for st in reversed(self.stages):
            rep = st.server(rep)
        # one fused pass: a finite L2 norm proves every entry finite (NaN and Inf propagate into it); only
        # otherwise are the entries scanned one by one, to name the bad one. The norm is kept for the norm guard.
        norm = update_norm(rep.update) if all(t.is_floating_point() for t in rep.update.values()) else None
        if norm is None or not math.isfinite(norm):
            norm = None
            for k, t in rep.update.items():
                if not _finite(t):
                    raise wire.MessageError(f"entry {k!r} contains NaN or Inf")
        n = rep.num_samples
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0 or n != int(n):
            raise wire.MessageError(f"num_samples must be a non-negative integer, got {n!r}")
        limit = self.max_samples(client) if self.max_samples is not None else None
        if limit is not None and n > limit:
            raise wire.MessageError(f"num_samples {int(n)} exceeds the {limit} that client {client} can have")
        loss = rep.train_loss
        if loss is not None and (isinstance(loss, bool) or not isinstance(loss, (int, float))
                                 or not math.isfinite(loss)):
            raise wire.MessageError(f"train_loss must be a finite number or null, got {loss!r}")
        bad = _non_finite(dict(rep.meta), "meta")
        if bad is not None:
            raise wire.MessageError(f"{bad} is NaN or Inf")
        try:
            self.check(rep)
        except ValueError as e:
            raise wire.MessageError(str(e)) from None
        rep = replace(rep, num_samples=int(n), norm=norm)
        if self.device.type != "cpu":
            rep = replace(rep, update={k: t.to(self.device) for k, t in rep.update.items()})
        return rep

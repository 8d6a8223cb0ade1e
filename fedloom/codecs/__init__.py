"""Communication-efficient update codecs (Konecny et al. 2016), composable like optax's ``chain``.

Configured per run as a list, applied in order on the client and undone in reverse on the server::

    codecs:
      - {name: hadamard, layers: inner}
      - {name: subsample, fraction: 0.0625, layers: inner}
      - {name: quantize, bits: 2, layers: inner}

Sketches (:mod:`fedloom.codecs.sketch`) compress a fully trained update; structured codecs
(:mod:`fedloom.codecs.structured`) restrict client training itself and must come first. :class:`UpdateCodec`
binds a chain to a model's layout and a run seed; :class:`CodecStage` is its client-pipeline stage (step 4:
encode on the client with the client's own chain state; step 5: decode on the server), and its
:meth:`UpdateCodec.reparam` is step 3's reparametrized training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from fedloom import wire
from fedloom.codecs import sketch, structured, topk  # noqa: F401  (registration)
from fedloom.codecs.base import (
    CODECS,
    Chain,
    ChainState,
    Codec,
    CodecParams,
    LayerSpec,
    build_codec,
    chain,
    layer_seed,
    select_layers,
)
from fedloom.codecs.sketch import fwht, pack_bits, unpack_bits
from fedloom.codecs.structured import StructuredCodec, StructuredReparam
from fedloom.core.types import ClientReport, ParamSpec, RoundInfo
from fedloom.rng import derive_seed


def chain_errors(entries: Sequence[tuple[str, Any]]) -> list[str]:
    """Composition errors of a configured list of (name, params), each naming its ``codecs.<i>`` field."""
    errors = []
    seen_sketch: int | None = None
    terminal: int | None = None
    for i, (name, _) in enumerate(entries):
        if name not in CODECS:
            continue
        cls = CODECS.get(name)
        if terminal is not None:
            errors.append(f"codecs.{i}: nothing can follow {entries[terminal][0]!r} (codecs.{terminal}): it emits packed bits")
        if cls.structured and seen_sketch is not None:
            errors.append(f"codecs.{i}: {name!r} changes client training and must come before sketching codecs "
                          f"(codecs.{seen_sketch} is {entries[seen_sketch][0]!r})")
        if not cls.structured and seen_sketch is None:
            seen_sketch = i
        if cls.terminal and terminal is None:
            terminal = i
    return errors


class UpdateCodec:
    """A run's codec chain, bound to the model layout and the run seed.

    Per (round, client) the key ``derive_seed(seed, 'codecs', round, client)`` seeds every stage and layer
    (:func:`fedloom.codecs.base.layer_seed`); it travels in the message's meta (``codec_key``), so the server
    regenerates rotations, masks and low-rank ``A`` from the message alone. Each client's chain state is kept
    here between rounds (explicit, per client).
    """

    def __init__(self, components: Sequence[tuple[str, Mapping[str, Any] | None]],
                 layout: Mapping[str, tuple[Sequence[int], torch.dtype]], seed: int):
        self.specs = [LayerSpec(n, tuple(int(x) for x in s)) for n, (s, _) in layout.items()]
        self.shapes = {s.name: s.shape for s in self.specs}
        self.chain = chain(*[build_codec(n, p) for n, p in components])
        self.plan: ChainState = self.chain.init(self.specs)
        self.wire_layout = self.chain.wire_layout(self.specs, self.plan)
        self.seed = seed
        self.states: dict[int, ChainState] = {}

    def key(self, rnd: int, client: int) -> int:
        return derive_seed(self.seed, "codecs", rnd, client)

    def reparam(self, rnd: int) -> StructuredReparam | None:
        """The engines' reparametrization for round ``rnd`` (None without structured codecs)."""
        r = StructuredReparam(self.chain, self.plan, lambda k: self.key(rnd, k))
        return r if r else None

    def compressed_layers(self) -> list[str]:
        return list(self.plan.layers)

    def encode(self, update: Mapping[str, torch.Tensor], meta: Mapping[str, Any], rnd: int, client: int) -> bytes:
        key = self.key(rnd, client)
        tensors, self.states[client] = self.chain.encode(update, self.states.get(client, self.plan), key)
        return wire.encode(tensors, {**meta, "codec_key": key})

    def decode(self, msg: bytes) -> wire.Message:
        """Decode one message to full-shape float32 updates (raises :class:`wire.MessageError` on bad input)."""
        m = wire.decode(msg, self.wire_layout)
        key = m.meta.get("codec_key")
        if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < 1 << 63:
            raise wire.MessageError(f"missing or invalid codec_key {key!r}")
        return wire.Message(self.chain.decode(m.tensors, self.plan, key, self.shapes), m.meta)


class CodecStage:
    """Client-pipeline stage: the codec chain. On the client it encodes the update with the client's own chain
    state (kept and checkpointed by the runtime: a stateful codec such as top-k with error feedback carries its
    residual there) and puts the message key in the meta; on the server it validates the key and decodes."""

    name = "codecs"

    def __init__(self, codec: UpdateCodec):
        self.codec = codec
        self.stateful = any(st.stateful for st in codec.chain.stages)  # else nothing per client is kept

    def init(self, client: int) -> ChainState:
        return self.codec.plan

    def client(self, report: ClientReport, state: ChainState, info: RoundInfo
               ) -> tuple[ClientReport, ChainState | None]:
        key = self.codec.key(info.round, report.client)
        tensors, new = self.codec.chain.encode(report.update, state, key)
        return replace(report, update=tensors, meta={**report.meta, "codec_key": key}), new if self.stateful else None

    def server(self, report: ClientReport) -> ClientReport:
        key = report.meta.get("codec_key")
        if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < 1 << 63:
            raise wire.MessageError(f"missing or invalid codec_key {key!r}")
        try:
            full = self.codec.chain.decode(report.update, self.codec.plan, key, self.codec.shapes)
        except ValueError as e:  # a stage found input no honest client produces (e.g. out-of-range indices)
            raise wire.MessageError(str(e)) from None
        meta = {k: v for k, v in report.meta.items() if k != "codec_key"}
        return replace(report, update=full, meta=meta)

    def out_spec(self, spec: ParamSpec) -> ParamSpec:
        return dict(self.codec.wire_layout)


__all__ = ["CODECS", "Chain", "ChainState", "Codec", "CodecParams", "CodecStage", "LayerSpec", "StructuredCodec",
           "StructuredReparam",
           "UpdateCodec", "build_codec", "chain", "chain_errors", "fwht", "layer_seed", "pack_bits", "select_layers",
           "unpack_bits"]

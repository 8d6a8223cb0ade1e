"""Messages on the wire.

Every message that crosses between server and client is serialized to ``bytes`` with this format, and
byte counts in metrics are ``len()`` of those bytes -- never an estimate from parameter counts.

Layout::

    b"FLM1" | uint32 little-endian header length | UTF-8 JSON header | concatenated raw tensor bytes

The header lists each entry's name, dtype, shape and byte length, plus a small ``meta`` dict (e.g. the
number of samples a client trained on). Decoding checks the magic, the lengths, and, when an expected
layout is given, each entry's name, dtype and shape, raising :class:`MessageError`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

MAGIC = b"FLM1"
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class MessageError(ValueError):
    """A message that cannot be decoded or does not match the expected layout."""


@dataclass
class Message:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


def encode(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any] | None = None) -> bytearray:
    """Serialize ``tensors`` (+ JSON ``meta``) into one message. Each tensor's bytes are copied exactly once,
    into the preallocated message (a ``bytearray``; :func:`decode` then reads it without another copy)."""
    entries = []
    parts = []
    for name, t in tensors.items():
        t = t.detach()
        if t.dtype not in _NAMES:
            raise MessageError(f"entry {name!r}: unsupported dtype {t.dtype}")
        nb = t.numel() * t.element_size()
        entries.append({"name": name, "dtype": _NAMES[t.dtype], "shape": list(t.shape), "nbytes": nb})
        parts.append((t, nb))
    header = json.dumps({"entries": entries, "meta": dict(meta or {})}, separators=(",", ":")).encode()
    off = 8 + len(header)
    out = bytearray(off + sum(nb for _, nb in parts))
    out[:4] = MAGIC
    out[4:8] = struct.pack("<I", len(header))
    out[8:off] = header
    for t, nb in parts:
        if nb:
            dst = torch.frombuffer(out, dtype=torch.uint8, count=nb, offset=off)
            dst.copy_(t.contiguous().reshape(-1).view(torch.uint8))  # contiguous(): no copy if already so
        off += nb
    return out


def decode(data: bytes | bytearray | memoryview,
           expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]] | None = None) -> Message:
    """Decode ``data``; if ``expected`` maps names to (shape, dtype), the message must match it exactly."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError(f"message must be bytes, got {type(data).__name__}")
    if isinstance(data, memoryview):
        data = bytes(data)
    if len(data) < 8 or data[:4] != MAGIC:
        raise MessageError("bad magic: not a fedloom message")
    (hlen,) = struct.unpack("<I", data[4:8])
    if 8 + hlen > len(data):
        raise MessageError("truncated header")
    try:
        header = json.loads(data[8 : 8 + hlen])
        entries = header["entries"]
        meta = header.get("meta", {})
    except (ValueError, KeyError, TypeError) as e:
        raise MessageError(f"malformed header: {e}") from None
    off = 8 + hlen
    out: dict[str, torch.Tensor] = {}
    # tensors are views of a writable buffer (torch.frombuffer warns on read-only bytes): a message made by
    # encode() is used in place (no copy); received bytes are copied once
    buf = data if isinstance(data, bytearray) else bytearray(data)
    for ent in entries:
        try:
            name, dt = ent["name"], _DTYPES[ent["dtype"]]
            shape, nb = tuple(int(s) for s in ent["shape"]), int(ent["nbytes"])
        except (KeyError, TypeError, ValueError) as err:
            raise MessageError(f"malformed entry {ent!r}: {err}") from None
        numel = 1
        for s in shape:
            numel *= s
        if nb != numel * torch.empty((), dtype=dt).element_size() or off + nb > len(data):
            raise MessageError(f"entry {name!r}: byte length does not match shape {shape} / message length")
        t = torch.frombuffer(buf, dtype=dt, count=numel, offset=off) if numel else torch.empty(0, dtype=dt)
        out[name] = t.view(shape)
        off += nb
    if off != len(data):
        raise MessageError(f"{len(data) - off} trailing bytes")
    if expected is not None:
        if set(out) != set(expected):
            missing = sorted(set(expected) - set(out))
            extra = sorted(set(out) - set(expected))
            raise MessageError(f"wrong entries: missing {missing}, unexpected {extra}")
        for name, (shape, dt) in expected.items():
            if tuple(out[name].shape) != tuple(shape):
                raise MessageError(f"entry {name!r}: shape {tuple(out[name].shape)} != expected {tuple(shape)}")
            if out[name].dtype != dt:
                raise MessageError(f"entry {name!r}: dtype {out[name].dtype} != expected {dt}")
    return Message(out, meta)

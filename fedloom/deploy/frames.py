"""A tiny, dependency-free frame format for the ClientApp <-> node worker link (stdlib only, so the per-message
ClientApp process stays light): ``uint32 header length | JSON header | blobs``, the header listing each blob's
name and length. Not fedloom's wire format: it carries fedloom's wire messages (and state) as opaque bytes."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any


def frame(header: dict[str, Any], blobs: dict[str, bytes]) -> bytes:
    names = list(blobs)
    head = json.dumps({**header, "_blobs": [[n, len(blobs[n])] for n in names]}).encode()
    return b"".join([struct.pack("<I", len(head)), head, *(bytes(blobs[n]) for n in names)])


def unframe(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    if len(data) < 4:
        raise ValueError("truncated frame")
    (n,) = struct.unpack("<I", data[:4])
    header = json.loads(data[4 : 4 + n])
    off, blobs = 4 + n, {}
    for name, size in header.pop("_blobs", []):
        blobs[name] = data[off : off + size]
        off += size
    if off != len(data):
        raise ValueError("frame length does not match its header")
    return header, blobs


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("<Q", len(payload)) + payload)


def recv_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ConnectionError("connection closed mid-frame")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    (n,) = struct.unpack("<Q", exactly(8))
    return exactly(n)

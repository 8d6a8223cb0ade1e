"""fedloom's round loop over a Flower Grid: the ``ClientRuntime`` of a deployed run.

The ServerApp's round loop hands this runtime the round's broadcast (fedloom wire messages, as bytes) and the
cohort; it sends one Flower TRAIN message per client to the SuperNode that holds the client's partition and waits
up to ``timeout`` seconds for the replies. Each message's only payload is a ``ConfigRecord`` of bytes: fedloom's
own messages travel unchanged, so the server validates them exactly as in the simulation. A client whose node does
not reply in time, or replies with an error, simply has no upload: the loop records it as dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedloom.core.types import Broadcast, Bytes

log = logging.getLogger("fedloom")

KEY = "fedloom"  # the ConfigRecord that carries fedloom's payload in every message


def message_bytes(msg: Message) -> int:
    """Bytes of a Flower message's content records (what Flower serializes for it, without transport framing)."""
    return sum(rec.count_bytes() for rec in msg.content.values()) if msg.has_content() else 0


class FlowerClients:
    """Steps 3-4 on SuperNodes. ``nodes`` maps fedloom client ids to Flower node ids (see :func:`discover`)."""

    def __init__(self, grid: Any, nodes: dict[int, int], timeout: float, num_clients: int | None = None):
        self.grid, self.nodes, self.timeout = grid, dict(nodes), timeout
        self.num_clients = num_clients if num_clients is not None else (max(nodes) + 1 if nodes else 0)
        self._known = set(nodes.values())
        self._metrics: dict[str, Any] = {}

    def refresh(self) -> None:
        """Follow the federation's membership: nodes that left are forgotten, nodes that joined (a restarted
        SuperNode comes back with a new node id) are asked which partition they hold."""
        ids = set(self.grid.get_node_ids())
        if ids == self._known:
            return
        self.nodes = {k: n for k, n in self.nodes.items() if n in ids}
        new = sorted(ids - self._known)
        if new:
            found = identify(self.grid, new, self.num_clients, timeout=min(self.timeout, 30.0))
            for k, n in found.items():
                log.info("client %d is now on node %d", k, n)
                self.nodes[k] = n
        self._known = ids

    def run(self, rnd: int, down: Broadcast, clients: Sequence[int]) -> list[tuple[int, Bytes]]:
        self.refresh()
        msgs, who, unknown = [], {}, []
        for k in clients:
            node = self.nodes.get(k)
            if node is None:  # no live node holds this partition
                unknown.append(k)
                continue
            payload = {"round": rnd, "client": k, "shared": bytes(down.shared)}
            if k in down.personal:
                payload["personal"] = bytes(down.personal[k])
            m = Message(RecordDict({KEY: ConfigRecord(payload)}), dst_node_id=node, message_type=MessageType.TRAIN,
                        group_id=str(rnd))
            msgs.append(m)
            who[node] = k
        t0 = time.perf_counter()
        replies = list(self.grid.send_and_receive(msgs, timeout=self.timeout)) if msgs else []
        wait = time.perf_counter() - t0
        uploads, per_client, errors = [], {}, []
        for r in replies:
            k = who.get(r.metadata.src_node_id)
            if k is None:
                continue
            if r.has_error():
                errors.append({"client": k, "reason": f"node error: {r.error.reason}"})
                log.warning("round %d: client %d's node replied with an error: %s", rnd, k, r.error.reason)
                continue
            rec = r.content.get(KEY)
            up = rec.get("upload") if isinstance(rec, ConfigRecord) else None
            if not isinstance(up, bytes):
                errors.append({"client": k, "reason": "reply without a fedloom upload"})
                continue
            uploads.append((k, up))
            per_client[k] = {"train_s": rec.get("train_s"), "encode_s": rec.get("encode_s"), "bytes": message_bytes(r)}
        replied = {k for k, _ in uploads}
        self._metrics = {
            "flower_bytes_down": sum(message_bytes(m) for m in msgs),
            "flower_bytes_up": sum(v["bytes"] for v in per_client.values()),
            "client_seconds": {str(k): {"train": v["train_s"], "encode": v["encode_s"]} for k, v in per_client.items()},
            "sent_to": sorted(who.values()), "replied": sorted(replied),
            "timed_out": sorted(k for k in who.values() if k not in replied and k not in {e["client"] for e in errors}),
            "node_errors": errors, "no_node": unknown, "reply_wait_s": wait,
        }
        return sorted(uploads, key=lambda u: list(clients).index(u[0]))

    def round_metrics(self) -> dict[str, Any]:
        return dict(self._metrics)


def discover(grid: Any, num_clients: int, wait: float, timeout: float = 30.0) -> dict[int, int]:
    """Ask every connected SuperNode which partition (fedloom client id) it holds: ``{client id: node id}``.
    Waits up to ``wait`` seconds for ``num_clients`` nodes to connect."""
    deadline = time.monotonic() + wait
    ids: list[int] = []
    while time.monotonic() < deadline:
        ids = list(grid.get_node_ids())
        if len(ids) >= num_clients:
            break
        time.sleep(0.5)
    return identify(grid, ids, num_clients, timeout)


def identify(grid: Any, ids: Sequence[int], num_clients: int, timeout: float) -> dict[int, int]:
    """``{client id: node id}`` for the nodes ``ids`` that say which partition they hold."""
    msgs = [Message(RecordDict({KEY: ConfigRecord({"op": "hello"})}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in ids]
    nodes: dict[int, int] = {}
    for r in grid.send_and_receive(msgs, timeout=timeout) if msgs else []:
        if r.has_error():
            log.warning("node %s did not identify itself: %s", r.metadata.src_node_id, r.error.reason)
            continue
        k = r.content[KEY].get("partition")
        if isinstance(k, int) and 0 <= k < num_clients and k not in nodes:
            nodes[k] = r.metadata.src_node_id
    return nodes

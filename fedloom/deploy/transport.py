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
POLL = 0.2  # seconds between polls for replies
IDENTIFY_TIMEOUT = 30.0  # seconds for a new node to say which partition it holds (its worker builds the run then)


def exchange(grid: Any, msgs: Sequence[Message], timeout: float, poll: float = POLL) -> list[Message]:
    """Push ``msgs`` and collect their replies until all are in or ``timeout`` seconds have passed -- what
    ``Grid.send_and_receive`` does, but polling every ``poll`` seconds instead of its fixed 3 s (a round should not
    wait up to 3 s more than its slowest reply, nor overrun its timeout by as much)."""
    if not msgs:
        return []
    ids = set(grid.push_messages(msgs))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while True:
        got = list(grid.pull_messages(ids))
        replies.extend(got)
        ids.difference_update(m.metadata.reply_to_message_id for m in got)
        if not ids or time.monotonic() >= deadline:
            return replies
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def message_bytes(msg: Message) -> int:
    """Bytes of a Flower message's content records (what Flower serializes for it, without transport framing)."""
    return sum(rec.count_bytes() for rec in msg.content.values()) if msg.has_content() else 0


class FlowerClients:
    """Steps 3-4 on SuperNodes. ``nodes`` maps fedloom client ids to Flower node ids (see :func:`discover`).

    Membership is followed as the run goes: a node that joins (a restarted SuperNode comes back with a new node id)
    is asked which partition it holds as soon as it is seen -- also while a round waits for its replies, so that a
    node restarted during a round serves the next one without a further wait."""

    def __init__(self, grid: Any, nodes: dict[int, int], timeout: float, num_clients: int | None = None):
        self.grid, self.nodes, self.timeout = grid, dict(nodes), timeout
        self.num_clients = num_clients if num_clients is not None else (max(nodes) + 1 if nodes else 0)
        self._known = set(nodes.values())  # node ids seen (asked, or identified by discover)
        self._hello: dict[str, tuple[int, float]] = {}  # a pending hello's message id -> (node id, when sent)
        self._last_look = 0.0
        self._metrics: dict[str, Any] = {}

    def _look(self) -> None:
        """Ask nodes not seen before which partition they hold (their replies are taken by :meth:`_heard`)."""
        self._last_look = time.monotonic()
        new = sorted(set(self.grid.get_node_ids()) - self._known)
        if not new:
            return
        msgs = [hello(n) for n in new]
        now = time.monotonic()
        for mid, n in zip(self.grid.push_messages(msgs), new):
            self._hello[mid] = (n, now)
        self._known |= set(new)

    def _heard(self, replies: Sequence[Message]) -> list[Message]:
        """Take the hello replies out of ``replies`` (mapping their nodes); returns the others."""
        rest = []
        for r in replies:
            pending = self._hello.pop(r.metadata.reply_to_message_id, None)
            if pending is None:
                rest.append(r)
                continue
            k = partition_of(r, self.num_clients)
            if k is not None:
                log.info("client %d is now on node %d", k, pending[0])
                self.nodes[k] = pending[0]
        return rest

    def refresh(self) -> None:
        """Follow the federation's membership: nodes that left are forgotten, nodes that joined are asked which
        partition they hold; waits for their answers (up to ``IDENTIFY_TIMEOUT`` from each question)."""
        ids = set(self.grid.get_node_ids())
        self.nodes = {k: n for k, n in self.nodes.items() if n in ids}
        self._look()
        while self._hello:
            self._heard(list(self.grid.pull_messages(set(self._hello))))
            now = time.monotonic()
            for mid, (n, sent) in list(self._hello.items()):
                if now - sent >= IDENTIFY_TIMEOUT:
                    log.warning("node %s did not say which partition it holds within %.0f s", n, IDENTIFY_TIMEOUT)
                    del self._hello[mid]
            if self._hello:
                time.sleep(POLL)

    def _exchange(self, msgs: Sequence[Message]) -> list[Message]:
        """:func:`exchange`, also taking hello replies and asking nodes that join meanwhile (every second)."""
        ids = set(self.grid.push_messages(msgs)) if msgs else set()
        deadline = time.monotonic() + self.timeout
        replies: list[Message] = []
        while ids:
            got = self._heard(list(self.grid.pull_messages(ids | set(self._hello))))
            replies.extend(got)
            ids.difference_update(m.metadata.reply_to_message_id for m in got)
            if not ids or time.monotonic() >= deadline:
                break
            if time.monotonic() - self._last_look >= 1.0:
                self._look()
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        return replies

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
        replies = self._exchange(msgs)
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
            per_client[k] = {"train_s": rec.get("train_s"), "encode_s": rec.get("encode_s"), "node_s": rec.get("node_s"),
                             "queued_s": rec.get("queued_s"), "bytes": message_bytes(r)}
        replied = {k for k, _ in uploads}
        self._metrics = {
            "flower_bytes_down": sum(message_bytes(m) for m in msgs),
            "flower_bytes_up": sum(v["bytes"] for v in per_client.values()),
            "client_seconds": {str(k): {"train": v["train_s"], "encode": v["encode_s"], "node": v["node_s"],
                                        "queued": v["queued_s"]} for k, v in per_client.items()},
            "sent_to": sorted(who.values()), "replied": sorted(replied),
            "timed_out": sorted(k for k in who.values() if k not in replied and k not in {e["client"] for e in errors}),
            "node_errors": errors, "no_node": unknown, "reply_wait_s": wait,
        }
        return sorted(uploads, key=lambda u: list(clients).index(u[0]))

    def round_metrics(self) -> dict[str, Any]:
        return dict(self._metrics)


def discover(grid: Any, num_clients: int, wait: float, timeout: float = IDENTIFY_TIMEOUT) -> dict[int, int]:
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


def hello(node: int) -> Message:
    """The question every node answers first: which partition (fedloom client id) it holds."""
    return Message(RecordDict({KEY: ConfigRecord({"op": "hello"})}), dst_node_id=node, message_type=MessageType.QUERY)


def partition_of(reply: Message, num_clients: int) -> int | None:
    """The client id a node's hello reply names, or None (an error reply, or not a client id of this run)."""
    if reply.has_error():
        log.warning("node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason)
        return None
    rec = reply.content.get(KEY)
    k = rec.get("partition") if isinstance(rec, ConfigRecord) else None
    return k if isinstance(k, int) and not isinstance(k, bool) and 0 <= k < num_clients else None


def identify(grid: Any, ids: Sequence[int], num_clients: int, timeout: float) -> dict[int, int]:
    """``{client id: node id}`` for the nodes ``ids`` that say which partition they hold."""
    nodes: dict[int, int] = {}
    for r in exchange(grid, [hello(n) for n in ids], timeout):
        k = partition_of(r, num_clients)
        if k is not None and k not in nodes:
            nodes[k] = r.metadata.src_node_id
    return nodes

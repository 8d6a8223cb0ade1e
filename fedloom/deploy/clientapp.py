"""The deployed ClientApp (a Flower ClientApp): fedloom's client side on a SuperNode.

Flower runs a ClientApp in a fresh process per message (``--isolation subprocess``). Importing torch and
building the run in every such process costs seconds, so this module imports nothing but Flower and the standard
library: if the node was given a worker (node config ``fedloom-worker="<unix socket>"``, started next to the
SuperNode by ``fedloom deploy --local``), the message is forwarded to that long-lived process, which keeps torch
and the node's built run warm (:mod:`fedloom.deploy.worker`). Without one the work runs here
(:mod:`fedloom.deploy.node`). Either way the client's persistent state (SCAFFOLD's c_i, FD's model, a codec's
memory) is kept in the node's ``context.state`` between rounds, never on the server.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedloom.deploy.frames import frame, recv_frame, send_frame, unframe

KEY = "fedloom"
WORKER_WAIT = 60.0  # seconds to wait for the node's worker to listen
app = ClientApp()


def _state_blobs(context: Context) -> dict[str, bytes]:
    saved = context.state.get(KEY)
    if not isinstance(saved, ConfigRecord):
        return {}
    return {f"state.{k}": v for k, v in saved.items() if isinstance(v, bytes)}


def _train_here(header: dict[str, Any], blobs: dict[str, bytes]) -> tuple[dict[str, Any], dict[str, bytes]]:
    from fedloom.deploy.node import NodeRuntime  # heavy: torch and the whole fedloom stack

    global _NODE
    if _NODE is None:
        _NODE = NodeRuntime()
    state = {k[len("state."):]: v for k, v in blobs.items() if k.startswith("state.")}
    upload, new, times = _NODE.train(blobs["config"].decode(), header["partition"], header["num_partitions"],
                                     header["round"], header["client"], blobs["shared"], blobs.get("personal"), state)
    return times, {"upload": upload, **{f"state.{k}": v for k, v in new.items()}}


_NODE: Any = None


def _via_worker(path: str, op: str, header: dict[str, Any], blobs: dict[str, bytes]
                ) -> tuple[dict[str, Any], dict[str, bytes]]:
    deadline = time.monotonic() + WORKER_WAIT
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        while True:  # the worker may still be importing torch when the first message (the hello) arrives
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
        send_frame(s, frame({"op": op, **header}, blobs))
        reply, out = unframe(recv_frame(s))
    if "error" in reply:
        raise RuntimeError(f"fedloom node worker: {reply['error']}")
    return reply, out


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which client (partition) this node holds. A node with a worker also builds the run there now (its data,
    model and pipeline), so that round 1 does not wait for it."""
    k = context.node_config.get("partition-id")
    worker = context.node_config.get("fedloom-worker")
    if isinstance(worker, str) and worker and "fedloom-config" in context.run_config:
        _via_worker(worker, "prepare", {"partition": k, "num_partitions": context.node_config.get("num-partitions")},
                    {"config": str(context.run_config["fedloom-config"]).encode()})
    return Message(RecordDict({KEY: ConfigRecord({"partition": k if isinstance(k, int) else -1})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of this node's client: the broadcast's bytes in, the upload's bytes out. The reply also says how
    long the message took to reach this handler (``queued_s``: transport, the SuperNode's pull, this process's
    start; measured against the server's clock, so meaningful where both share one) and how long the handler took."""
    t0 = time.time()
    created = msg.metadata.created_at
    rec = msg.content[KEY]
    header = {"round": int(rec["round"]), "client": rec.get("client"), "partition": context.node_config.get("partition-id"),
              "num_partitions": context.node_config.get("num-partitions")}
    blobs = {"config": str(context.run_config["fedloom-config"]).encode(), "shared": rec["shared"],
             **({"personal": rec["personal"]} if "personal" in rec else {}), **_state_blobs(context)}
    worker = context.node_config.get("fedloom-worker")
    times, out = _via_worker(worker, "train", header, blobs) if isinstance(worker, str) and worker else \
        _train_here(header, blobs)
    state = {k[len("state."):]: v for k, v in out.items() if k.startswith("state.")}
    if state:
        context.state[KEY] = ConfigRecord(state)
    reply = {"upload": out["upload"], "train_s": float(times.get("train_s", 0.0)),
             "encode_s": float(times.get("encode_s", 0.0)), "node_s": time.time() - t0,
             "queued_s": t0 - float(created) if isinstance(created, (int, float)) and created > 0 else -1.0}
    return Message(RecordDict({KEY: ConfigRecord(reply)}), reply_to=msg)

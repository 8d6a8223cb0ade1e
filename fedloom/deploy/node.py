"""fedloom's client side on one SuperNode: one client (the node's partition), built once per config and reused.

Used in-process by the ClientApp (:mod:`fedloom.deploy.clientapp`, when the node has no worker) and by the
long-lived node worker (:mod:`fedloom.deploy.worker`, which keeps torch and the built run warm between Flower's
per-message ClientApp processes). The client's persistent state travels in and out as bytes, so the caller keeps
it where the node keeps state (Flower's ``context.state``): it never reaches the server.
"""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

import torch
import yaml

from fedloom.build import Run, build_run
from fedloom.config import validate_config
from fedloom.core.types import Broadcast


def _dump(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _load(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


class NodeRuntime:
    """Builds the run of a config once (data, model, algorithm, client pipeline) and serves its client rounds."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}

    def run_for(self, config_text: str) -> Run:
        key = hashlib.sha256(config_text.encode()).hexdigest()
        if key not in self._runs:
            cfg = validate_config(yaml.safe_load(config_text))
            self._runs.clear()  # one run at a time per node
            self._runs[key] = build_run(cfg.model_copy(update={"progress": False, "threads": cfg.threads or 1}))
        return self._runs[key]

    def check_partition(self, run: Run, partition: Any, num_partitions: Any) -> int:
        n = run.ctx.num_clients
        if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < n:
            raise ValueError(f"node config partition-id={partition!r} is not a client id of this run (0..{n - 1})")
        if num_partitions is not None and num_partitions != n:
            raise ValueError(f"node config num-partitions={num_partitions} but the run has data.num_clients={n}")
        return partition

    def train(self, config_text: str, partition: Any, num_partitions: Any, rnd: int, client: Any, shared: bytes,
              personal: bytes | None, state: dict[str, bytes]) -> tuple[bytes, dict[str, bytes], dict[str, float]]:
        """One round of the node's client: (upload bytes, new state blobs, timings)."""
        run = self.run_for(config_text)
        k = self.check_partition(run, partition, num_partitions)
        if client != k:
            raise ValueError(f"a message for client {client!r} reached the node holding client {k}")
        clients = run.clients
        clients.client_states.clear()
        clients.pipeline_states.clear()
        if "client" in state:
            clients.client_states[k] = _load(state["client"])
        if "pipeline" in state:
            clients.pipeline_states[k] = _load(state["pipeline"])
        down = Broadcast(bytearray(shared), {k: bytearray(personal)} if personal else {})
        t0 = time.perf_counter()
        ((_, upload),) = clients.run(rnd, down, [k])
        seconds = time.perf_counter() - t0
        new: dict[str, bytes] = {}
        if k in clients.client_states:
            new["client"] = _dump(clients.client_states[k])
        if k in clients.pipeline_states:
            new["pipeline"] = _dump(clients.pipeline_states[k])
        return bytes(upload), new, {"train_s": clients.last_seconds.get("train", seconds),
                                    "encode_s": clients.last_seconds.get("encode", 0.0)}

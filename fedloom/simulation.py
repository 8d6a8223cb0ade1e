"""The round loop -- the one place where a federated round happens (Kairouz et al.'s template).

    1. sample a cohort             4. encode each update on its client (bytes on the wire)
    2. broadcast the server model  5. decode, validate and aggregate on the server
    3. client work (engine)        6. apply the server update; evaluate; record

Algorithms supply only their math (:mod:`fedloom.algorithms`), engines only execution (:mod:`fedloom.engine`).
Every message is really serialized (:mod:`fedloom.wire`) and the byte counts in metrics are its length.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedloom import wire
from fedloom.algorithms import Algorithm, ClientOutput, LocalSchedule, build_algorithm
from fedloom.algorithms.server_opt import build_server_optimizer
from fedloom.config import RunConfig, dump_config
from fedloom.data.federated import FederatedData, build_federated
from fedloom.engine import CohortTask, Engine, build_engine, fallback_reason
from fedloom.metrics.history import MetricsWriter
from fedloom.models import build_model
from fedloom.rng import derive_seed, torch_generator

log = logging.getLogger("fedloom")


@dataclass
class ServerState:
    """Everything the server carries between rounds."""

    params: dict[str, torch.Tensor]
    opt_state: dict
    round: int = 0
    algo_state: dict = field(default_factory=dict)


def evaluate(model, params, buffers, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> tuple[float, float]:
    """Test loss and accuracy of ``params`` on (x, y), in large chunks without autograd."""
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            logits = functional_call(model, (params, buffers), (xb,))
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return loss_sum / n, correct / n


class Simulation:
    """A federated training run built from a :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, *, data: FederatedData | None = None,
                 engine: Engine | None = None):
        self.cfg = cfg
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.device = torch.device(cfg.device)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no CUDA device is available")
        d = cfg.data
        self.data = data or build_federated(d.dataset.name, d.dataset.params, d.num_clients, d.partition.name,
                                            d.partition.params, cfg.seed)
        if self.device.type != "cpu":
            src = self.data.source
            src.train_x, src.train_y = src.train_x.to(self.device), src.train_y.to(self.device)
        torch.manual_seed(derive_seed(cfg.seed, "model-init"))
        src = self.data.source
        self.model = build_model(cfg.model.name, cfg.model.params, src.input_shape, src.num_classes).to(self.device)
        self.algorithm: Algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.params)
        c = cfg.client
        self.schedule: LocalSchedule = self.algorithm.schedule(
            LocalSchedule(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, local_steps=c.local_steps,
                          momentum=c.momentum, weight_decay=c.weight_decay))
        self.engine = engine or self._pick_engine()
        self.server_opt = build_server_optimizer(cfg.server_optimizer.name, cfg.server_optimizer.params)
        params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}
        self.state = ServerState(params, self.server_opt.init(params))
        self.expected = {k: (tuple(v.shape), v.dtype) for k, v in params.items()}
        self.out_dir = Path(out_dir) if out_dir else None
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl" if self.out_dir else None)
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(dump_config(cfg))

    def _pick_engine(self) -> Engine:
        name = self.cfg.engine.name
        if name == "vectorized":
            why = fallback_reason(self.algorithm, self.model)
            if why:
                log.warning("falling back to the sequential engine: %s", why)
                self.engine_note = f"fell back to sequential: {why}"
                return build_engine("sequential", None)
        self.engine_note = ""
        return build_engine(name, self.cfg.engine.params)

    # -- the round --------------------------------------------------------------------------------
    def sample_cohort(self, rnd: int) -> list[int]:
        """Step 1: uniform sampling without replacement, seeded by (seed, round)."""
        g = torch_generator(self.cfg.seed, "cohort", rnd)
        return sorted(torch.randperm(self.data.num_clients, generator=g)[: self.cfg.cohort_size].tolist())

    def encode_update(self, client: int, out: ClientOutput) -> bytes:
        """Step 4, on the client: serialize the update (codecs plug in here)."""
        meta = {"client": client, "num_samples": out.num_samples, "train_loss": out.train_loss, **out.meta}
        return wire.encode(out.update, meta)

    def decode_update(self, client: int, msg: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Step 5a, on the server: decode and validate one client's message (raises on bad input)."""
        m = wire.decode(msg, self.expected)
        for k, t in m.tensors.items():
            if not torch.isfinite(t).all():
                raise wire.MessageError(f"entry {k!r} contains NaN or Inf")
        if int(m.meta.get("client", client)) != client:
            raise wire.MessageError(f"message claims to be from client {m.meta.get('client')}")
        return {k: t.to(self.device) for k, t in m.tensors.items()}, m.meta

    def round(self, rnd: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        st = self.state
        # 1. sample
        cohort = self.sample_cohort(rnd)
        # 2. broadcast: one serialized message, received by every cohort member
        down = wire.encode({k: v for k, v in st.params.items()}, {"round": rnd})
        received = {k: v.to(self.device) for k, v in wire.decode(down, self.expected).tensors.items()}
        bytes_down = len(down) * len(cohort)
        # 3. client work
        task = CohortTask(self.model, received, self.buffers, cohort, self.data, self.schedule, self.algorithm,
                          self.cfg.seed, rnd, self.device)
        outputs = self.engine.run(task)
        # 4. encode on each client
        msgs = [self.encode_update(k, o) for k, o in zip(cohort, outputs)]
        bytes_up = sum(len(m) for m in msgs)
        # 5. decode + validate + aggregate
        updates, weights, metas, rejected = [], [], [], []
        for k, m in zip(cohort, msgs):
            try:
                upd, meta = self.decode_update(k, m)
            except (wire.MessageError, ValueError) as e:
                log.warning("round %d: rejected update from client %d: %s", rnd, k, e)
                rejected.append({"client": k, "reason": str(e)})
                continue
            updates.append(upd)
            metas.append(meta)
            weights.append(self.algorithm.client_weight(meta))
        # 6. apply, evaluate, record
        if updates:
            agg = self.algorithm.aggregate(updates, weights)
            st.opt_state = self.server_opt.step(st.params, agg, st.opt_state)
        st.round = rnd
        rec: dict[str, Any] = {"round": rnd, "test_accuracy": None, "test_loss": None}
        n_acc = sum(float(m["num_samples"]) for m in metas)
        rec["train_loss"] = (sum(float(m["train_loss"]) * float(m["num_samples"]) for m in metas) / n_acc) if n_acc else None
        if rnd % self.cfg.eval_every == 0 or rnd == self.cfg.rounds:
            src = self.data.source
            rec["test_loss"], rec["test_accuracy"] = evaluate(self.model, st.params, self.buffers, src.test_x,
                                                              src.test_y, self.cfg.eval_batch_size, self.device)
        rec.update(bytes_up=bytes_up, bytes_down=bytes_down, clients=len(cohort), reported=len(updates),
                   rejected=rejected, seconds=time.perf_counter() - t0)
        self.metrics.write(rec)
        return rec

    def run(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        bar = tqdm(range(self.state.round + 1, self.cfg.rounds + 1), desc=self.cfg.name, unit="round",
                   disable=not self.cfg.progress, dynamic_ncols=True)
        last_acc = None
        try:
            for rnd in bar:
                rec = self.round(rnd)
                if rec["test_accuracy"] is not None:
                    last_acc = rec["test_accuracy"]
                bar.set_postfix(acc=f"{last_acc:.4f}" if last_acc is not None else "-",
                                loss=f"{rec['train_loss']:.3f}" if rec["train_loss"] is not None else "-")
        finally:
            bar.close()
            self.metrics.close()
        if self.out_dir:
            torch.save({k: v.cpu() for k, v in self.state.params.items()}, self.out_dir / "model.pt")
        return self.metrics.records

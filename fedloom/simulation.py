"""The round loop -- the one place where a federated round happens (Kairouz et al.'s template).

    1. sample a cohort             4. encode each update on its client (bytes on the wire)
    2. broadcast the server model  5. decode, validate and aggregate on the server
    3. client work (engine)        6. apply the server update; evaluate; record

Algorithms supply only their math (:mod:`fedloom.algorithms`), engines only execution (:mod:`fedloom.engine`).
Every message is really serialized (:mod:`fedloom.wire`) and the byte counts in metrics are its length.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedloom import wire
from fedloom.algorithms import Algorithm, ClientOutput, LocalSchedule, build_algorithm
from fedloom.algorithms.server_opt import build_server_optimizer
from fedloom.checkpoint import NAME as CHECKPOINT
from fedloom.checkpoint import load as load_checkpoint
from fedloom.checkpoint import save_atomic
from fedloom.config import RunConfig, dump_config
from fedloom.data.federated import FederatedData, build_federated
from fedloom.engine import CohortTask, Engine, build_engine, fallback_reason
from fedloom.metrics.history import MetricsWriter
from fedloom.models import build_model
from fedloom.privacy import DPFedAvg
from fedloom.robust import Attack, RobustAggregator
from fedloom.registry import ENVIRONMENTS
from fedloom.schedules import build_lr_schedule
from fedloom.system import CohortPlan, CohortPlanner
from fedloom.rng import derive_seed

log = logging.getLogger("fedloom")


@dataclass
class ServerState:
    """Everything the server carries between rounds."""

    params: dict[str, torch.Tensor]
    opt_state: dict
    round: int = 0
    algo_state: dict = field(default_factory=dict)
    reported: int = 0  # accepted updates in the current round (|S| for algorithms that need it, e.g. SCAFFOLD)


def evaluate(model, params, buffers, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> tuple[float, float]:
    """Test loss and accuracy of ``params`` on (x, y), in large chunks without autograd."""
    loss_sum, correct = 0.0, 0
    was_training = model.training
    model.eval()  # dropout off while scoring; engines train through the same module template
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            logits = functional_call(model, (params, buffers), (xb,))
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(y.numel(), 1)  # targets, not rows: per-position targets [N, T] count every position
    return loss_sum / n, correct / n


class Simulation:
    """A federated training run built from a :class:`RunConfig`."""

    def __init__(self, cfg: RunConfig, out_dir: str | Path | None = None, *, data: FederatedData | None = None,
                 engine: Engine | None = None, secure_aggregation: Any = None):
        self.cfg = cfg
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        self.device = torch.device(cfg.device)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no CUDA device is available")
        d = cfg.data
        if data is None and d.dataset.name in ENVIRONMENTS:  # not labelled data: e.g. RL environments
            env = ENVIRONMENTS.entry(d.dataset.name)
            data = env.factory(env.params(**d.dataset.params), d.num_clients, cfg.seed)
        self.data = data or build_federated(d.dataset.name, d.dataset.params, d.num_clients, d.partition.name,
                                            d.partition.params, cfg.seed)
        self.algorithm: Algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.params)
        self.data = self.algorithm.prepare_data(self.data, cfg)  # e.g. FAug fills the devices' missing labels
        self.attack = (Attack(cfg.attack.name, cfg.attack.params, self.data.num_clients, cfg.seed)
                       if cfg.attack is not None else None)
        if self.attack is not None:
            self.attack.poison_data(self.data)  # label flipping rewrites the attackers' labels (a private copy)
        if self.device.type != "cpu" and getattr(self.data.source, "train_x", None) is not None:
            src = self.data.source
            src.train_x, src.train_y = src.train_x.to(self.device), src.train_y.to(self.device)
        torch.manual_seed(derive_seed(cfg.seed, "model-init"))
        src = self.data.source
        self.model = build_model(cfg.model.name, cfg.model.params, src.input_shape, src.num_classes).to(self.device)
        self.algorithm.setup(self.model)
        c = cfg.client
        self.schedule: LocalSchedule = self.algorithm.schedule(
            LocalSchedule(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, local_steps=c.local_steps,
                          momentum=c.momentum, weight_decay=c.weight_decay))
        self.lr_schedule = (build_lr_schedule(c.lr_schedule.name, c.lr_schedule.params)
                            if c.lr_schedule is not None else None)
        self.engine = engine or self._pick_engine()
        self.planner = CohortPlanner(cfg.system, self.data.client_sizes, cfg.cohort_size, self.schedule.epochs, cfg.seed)
        self.aggregator = RobustAggregator(cfg.aggregator.name, cfg.aggregator.params)
        self.dp = DPFedAvg(cfg.privacy, self.data.num_clients, cfg.cohort_size, cfg.seed) if cfg.privacy else None
        self.server_opt = build_server_optimizer(cfg.server_optimizer.name, cfg.server_optimizer.params)
        params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}
        self.state = ServerState(params, self.server_opt.init(params))
        self.expected = {k: (tuple(v.shape), v.dtype) for k, v in params.items()}
        self.client_states: dict[int, Any] = {}  # stateful clients (SCAFFOLD's c_i, FD's device models)
        self.current_round = 0
        self.out_dir: Path | None = None
        self.metrics = MetricsWriter(None)
        sa = secure_aggregation if secure_aggregation is not None else getattr(cfg, "secure_aggregation", None)
        self.secagg_config, self.secagg = sa, None
        self.algorithm.bind(self)
        self.upload = self.algorithm.upload_spec(self.expected)  # what every client message must carry
        self.codecs = self._build_codecs()  # update codec chain (fedloom.codecs); None = raw float32 updates
        # -- secure aggregation (fedloom.crypto.secagg): steps 4-5 on Paillier ciphertexts; None = off --
        if sa is not None:
            from fedloom.crypto.secagg import build_secure_aggregation

            self.secagg = build_secure_aggregation(self, sa)
        if out_dir:
            self.attach_output(out_dir)

    def attach_output(self, out_dir: str | Path, write_config: bool = True) -> None:
        """Record this run in ``out_dir``: config.yaml (unless resuming), metrics.jsonl appended to, checkpoints."""
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if write_config:
            (self.out_dir / "config.yaml").write_text(dump_config(self.cfg))
        self.metrics = MetricsWriter(self.out_dir / "metrics.jsonl")

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

    def _build_codecs(self):
        if not self.cfg.codecs:
            return None
        from fedloom.codecs import UpdateCodec

        codecs = UpdateCodec([(c.name, c.params) for c in self.cfg.codecs], self.upload, self.cfg.seed)
        if codecs.reparam(0) is not None and (getattr(self.algorithm, "train_client", None) is not None
                                              or not getattr(self.algorithm, "vectorizable", True)):
            raise ValueError(f"codecs: structured codecs restrict local SGD on a loss; algorithm "
                             f"{self.cfg.algorithm.name!r} runs its own client code")
        return codecs

    # -- the round --------------------------------------------------------------------------------
    def sample_cohort(self, rnd: int, msg_bytes: int = 0) -> CohortPlan:
        """Step 1: who is sampled, who drops out, who reports (fedloom.system; default: uniform, all report)."""
        return self.planner.plan(rnd, msg_bytes)

    def round_schedule(self, rnd: int) -> LocalSchedule:
        """Round ``rnd``'s local schedule: the algorithm's (post-local SGD varies it), then the lr schedule."""
        sched = self.algorithm.round_schedule(self.schedule, rnd)
        if self.lr_schedule is None:
            return sched
        if sched.local_steps is None:  # epoch mode: client step counts differ; the schedule runs on rounds
            return replace(sched, lr=sched.lr * self.lr_schedule(rnd))
        H = sched.local_steps
        return replace(sched, lr_steps=tuple(sched.lr * self.lr_schedule((rnd - 1) * H + s + 1) for s in range(H)))

    def client_side(self, client: int, rnd: int, out: ClientOutput) -> ClientOutput:
        """What a client does to its update before encoding: an attacker corrupts it; local DP noises it."""
        u = out.update
        if self.attack is not None:
            u = self.attack.corrupt(client, rnd, u)
        if self.dp is not None:
            u = self.dp.client_side(client, rnd, u)
        return out if u is out.update else replace(out, update=u)

    def encode_update(self, client: int, out: ClientOutput) -> bytes:
        """Step 4, on the client: serialize the update (codecs plug in here)."""
        meta = {"client": client, "num_samples": out.num_samples, "train_loss": out.train_loss, **out.meta}
        if self.codecs is not None:
            return self.codecs.encode(out.update, meta, self.current_round, client)
        return wire.encode(out.update, meta)

    def decode_update(self, client: int, msg: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Step 5a, on the server: decode and validate one client's message (raises on bad input)."""
        m = wire.decode(msg, self.upload) if self.codecs is None else self.codecs.decode(msg)
        for k, t in m.tensors.items():
            # fast path: a sum is finite only if every element is (NaN/Inf propagate); full scan otherwise
            if t.is_floating_point() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
                raise wire.MessageError(f"entry {k!r} contains NaN or Inf")
        if int(m.meta.get("client", client)) != client:
            raise wire.MessageError(f"message claims to be from client {m.meta.get('client')}")
        return {k: t.to(self.device) for k, t in m.tensors.items()}, m.meta

    def round(self, rnd: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        st = self.state
        self.current_round = rnd
        alg = self.algorithm
        shared = {**(st.params if alg.broadcasts_model else {}), **alg.broadcast_extras(st)}
        down = wire.encode(shared, {"round": rnd}) if shared else b""  # nothing shared (FD): nothing sent
        # 1. sample: the planner decides who reports (dropouts and stragglers never send an update)
        plan = self.sample_cohort(rnd, len(down))
        cohort = plan.reporting
        # 2. broadcast: one serialized message, received by every sampled client (+ personalized ones, if any)
        spec = {k: (tuple(v.shape), v.dtype) for k, v in shared.items()}
        received = {k: v.to(self.device) for k, v in wire.decode(down, spec).tensors.items()} if shared else {}
        bytes_down = len(down) * len(plan.sampled)
        personal = {}
        reporting = set(cohort)
        for k in plan.sampled:
            mine = alg.client_broadcast(st, k)
            if mine:
                msg = wire.encode(mine, {"round": rnd, "client": k})
                bytes_down += len(msg)
                if k in reporting:
                    personal[k] = {n: v.to(self.device) for n, v in wire.decode(msg).tensors.items()}
        # 3. client work (then each client's own bookkeeping: stateful clients update their state here)
        task = CohortTask(self.model, {k: v for k, v in received.items() if k in self.expected}, self.buffers,
                          cohort, self.data, self.round_schedule(rnd), alg, self.cfg.seed, rnd,
                          self.device,
                          reparam=self.codecs.reparam(rnd) if self.codecs is not None else None,
                          extras={k: v for k, v in received.items() if k not in self.expected},
                          personal=personal, client_states=self.client_states)
        outputs = [self.client_side(k, rnd, alg.client_finish(task, k, o))
                   for k, o in zip(cohort, self.engine.run(task))]
        # 4. encode on each client; 5. decode + validate on the server. Plain messages are decoded as they
        # arrive (one client at a time, while its bytes are still in cache); the results are the same.
        updates, weights, metas, rejected = [], [], [], []
        bytes_up = 0
        if self.secagg is not None:  # secure aggregation: pack + encrypt n_k * update under the authority's key;
            msgs = [self.secagg.encode(rnd, k, o) for k, o in zip(cohort, outputs)]  # the server multiplies
            bytes_up = sum(len(m) for m in msgs)  # ciphertexts, the key authority decrypts the mean
            updates, weights, metas, rejected = self.secagg.aggregate(rnd, cohort, msgs)
        else:
            for k, o in zip(cohort, outputs):
                m = self.encode_update(k, o)
                bytes_up += len(m)
                try:
                    upd, meta = self.decode_update(k, m)
                    wgt = self.algorithm.client_weight(meta)  # may validate the meta (e.g. per-class counts)
                except (wire.MessageError, ValueError) as e:
                    log.warning("round %d: rejected update from client %d: %s", rnd, k, e)
                    rejected.append({"client": k, "reason": str(e)})
                    continue
                updates.append(upd)
                metas.append(meta)
                weights.append(wgt)
        # 6. apply, evaluate, record
        rec: dict[str, Any] = {"round": rnd, "test_accuracy": None, "test_loss": None}
        st.round, st.reported = rnd, len(updates)
        if updates:
            if self.dp is not None:  # DP-FedAvg: clipped sum + noise over the cohort size
                agg, dp_info = self.dp.aggregate(rnd, updates)
                rec.update(dp_info)
            elif self.aggregator.name != "mean" or self.aggregator.p.max_norm is not None:
                agg = self.aggregator(updates, weights, self.algorithm)
            else:
                agg = self.algorithm.server_aggregate(st.params, updates, weights)
            rec.update(self.algorithm.server_update(st, agg, self.server_opt) or {})
        if self.dp is not None and "epsilon" not in rec:
            rec["epsilon"] = self.dp.epsilon(self.dp.state["rounds"])
        n_acc = sum(float(m["num_samples"]) for m in metas)
        rec["train_loss"] = (sum(float(m["train_loss"]) * float(m["num_samples"]) for m in metas) / n_acc) if n_acc else None
        if rnd % self.cfg.eval_every == 0 or rnd == self.cfg.rounds:
            rec.update(self.algorithm.evaluate(self))
        rejected_ids = {r["client"] for r in rejected}
        rec.update(bytes_up=bytes_up, bytes_down=bytes_down, clients=len(cohort), reported=len(metas),
                   rejected=rejected, sampled_ids=plan.sampled,
                   reported_ids=[c for c in cohort if c not in rejected_ids],
                   dropped=[{"client": c, "reason": r} for c, r in sorted(plan.dropped.items())],
                   seconds=time.perf_counter() - t0)
        if self.secagg is not None:
            rec.update(self.secagg.round_info)
        self.metrics.write(rec)
        every = self.cfg.checkpoint_every
        if self.out_dir is not None and every and (rnd % every == 0 or rnd == self.cfg.rounds):
            self.save_checkpoint()
        return rec

    # -- checkpoint / resume -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Everything needed to continue bit-identically (all other randomness is derived from seed+round)."""
        st = self.state
        ck = {"round": st.round, "params": st.params, "opt_state": st.opt_state, "algo_state": st.algo_state,
              "dp_state": self.dp.state if self.dp is not None else None, "torch_rng": torch.get_rng_state(),
              "client_states": self.client_states,
              "config": dump_config(self.cfg)}
        save_atomic(ck, self.out_dir / CHECKPOINT)

    @classmethod
    def resume(cls, run_dir: str | Path) -> "Simulation":
        """Continue the run in ``run_dir`` from its last checkpoint; metrics after it are dropped and redone."""
        from fedloom.config import load_config

        run_dir = Path(run_dir)
        if not (run_dir / CHECKPOINT).is_file():
            raise FileNotFoundError(f"{run_dir} has no {CHECKPOINT} to resume from")
        cfg = load_config(run_dir / "config.yaml")
        sim = cls(cfg)
        ck = load_checkpoint(run_dir / CHECKPOINT)
        for k, v in ck["params"].items():
            sim.state.params[k].copy_(v)
        sim.state.opt_state, sim.state.algo_state, sim.state.round = ck["opt_state"], ck["algo_state"], ck["round"]
        sim.client_states.clear()
        sim.client_states.update(ck.get("client_states") or {})
        if sim.dp is not None and ck["dp_state"] is not None:
            sim.dp.state = ck["dp_state"]
        torch.set_rng_state(ck["torch_rng"])
        mpath = run_dir / "metrics.jsonl"
        kept = [ln for ln in (mpath.read_text().splitlines() if mpath.exists() else [])
                if ln.strip() and json.loads(ln)["round"] <= ck["round"]]
        tmp = mpath.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, mpath)
        sim.attach_output(run_dir, write_config=False)
        sim.metrics.records = [json.loads(ln) for ln in kept]
        return sim

    def run(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        bar = tqdm(range(self.state.round + 1, self.cfg.rounds + 1), desc=self.cfg.name, unit="round",
                   disable=not self.cfg.progress, dynamic_ncols=True)
        last, head = None, self.algorithm.headline
        short = {"test_accuracy": "acc"}.get(head, head)
        try:
            for rnd in bar:
                rec = self.round(rnd)
                if rec.get(head) is not None:
                    last = rec[head]
                bar.set_postfix({short: f"{last:.4f}" if last is not None else "-",
                                 "loss": f"{rec['train_loss']:.3f}" if rec["train_loss"] is not None else "-"})
        finally:
            bar.close()
            self.metrics.close()
        if self.out_dir:
            torch.save(self.algorithm.final_state(self), self.out_dir / "model.pt")
        return self.metrics.records

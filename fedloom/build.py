"""The composition root: :func:`build_run` turns a validated :class:`~fedloom.config.RunConfig` into a run.

This is the only place that knows every concrete part. It builds them in an order that matters (and says why):
the data (then the algorithm's ``prepare_data``, then attacks that poison it), the model from a derived seed,
the frozen :class:`~fedloom.core.types.RunContext`, the algorithm bound to it, the client pipeline (attack
simulation -> local DP -> codecs -> encoder) and the server pipeline (decoder -> aggregator), the planner, and the
in-process client runtime. Everything it returns talks through :mod:`fedloom.core` interfaces.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import torch

from fedloom import wire
from fedloom.algorithms import build_algorithm
from fedloom.algorithms.server_opt import build_server_optimizer
from fedloom.codecs import CodecStage, UpdateCodec
from fedloom.config import ConfigError, RunConfig, features
from fedloom.core import compat
from fedloom.core.aggregate import Aggregator, WeightedMean
from fedloom.core.algorithm import Algorithm
from fedloom.core.loop import Server
from fedloom.core.pipeline import ClientPipeline, ClientStage, Encoder, PlainEncoder, ServerPipeline
from fedloom.core.types import Broadcast, Bytes, LocalSchedule, RoundInfo, RunContext, ServerState, spec_of
from fedloom.crypto.secagg import CiphertextSum, SecAggEncoder, SecureAggregation, build_secure_aggregation
from fedloom.data.federated import build_federated
from fedloom.engine import CohortJob, Engine, build_engine, fallback_reason
from fedloom.heap import retain_freed_memory
from fedloom.models import build_model
from fedloom.models.tasks import build_task
from fedloom.privacy import DPAggregator, DPFedAvg, LocalDPStage
from fedloom.registry import ENVIRONMENTS
from fedloom.rng import derive_seed
from fedloom.robust import Attack, AttackStage, RobustAggregator
from fedloom.schedules import build_lr_schedule
from fedloom.system import CohortPlanner

log = logging.getLogger("fedloom")


class SimulatedClients:
    """Steps 3-4 in one process: every sampled client decodes the broadcast, the engine runs the cohort's local
    work (batched under vmap where it can), and each client's report goes through its client pipeline to bytes.
    Client, pipeline and optimizer states (SCAFFOLD's c_i, FD's device models, codec memory, Adam's moments under
    ``client.optimizer.persist``) live here, per client."""

    def __init__(self, ctx: RunContext, algorithm: Algorithm, engine: Engine, pipeline: ClientPipeline,
                 client_states: dict[int, Any], lr_schedule: Any = None, codec: UpdateCodec | None = None,
                 optimizer_states: dict[int, Any] | None = None):
        self.ctx, self.algorithm, self.engine, self.pipeline = ctx, algorithm, engine, pipeline
        self.client_states = client_states  # the algorithm's per-client state
        self.optimizer_states = optimizer_states  # per-client optimizer states (client.optimizer.persist), or None
        self.pipeline_states: dict[int, dict[str, Any]] = {}  # per-client stage states (stateful stages only)
        self.lr_schedule, self.codec = lr_schedule, codec
        self.last_seconds: dict[str, float] = {}  # the last round's local work ("train") and pipeline ("encode")
        self.last_failures: dict[int, str] = {}  # clients whose own pipeline failed in the last round (sent nothing)

    def schedule(self, rnd: int) -> LocalSchedule:
        """Round ``rnd``'s local schedule: the algorithm's (post-local SGD varies it), then the lr schedule."""
        sched = self.algorithm.local_schedule(self.ctx.schedule, rnd)
        if self.lr_schedule is None:
            return sched
        if sched.local_steps is None:  # epoch mode: client step counts differ; the schedule runs on rounds
            return replace(sched, lr=sched.lr * self.lr_schedule(rnd))
        H = sched.local_steps
        return replace(sched, lr_steps=tuple(sched.lr * self.lr_schedule((rnd - 1) * H + s + 1) for s in range(H)))

    def job(self, rnd: int, down: Broadcast, clients: Sequence[int]) -> tuple[CohortJob, dict[str, Any]]:
        """The cohort's work order from what the clients received (decoded from the broadcast's bytes)."""
        ctx, dev = self.ctx, self.ctx.device
        received, meta = {}, {}
        if down.shared:
            m = wire.decode(down.shared)
            received, meta = {k: v.to(dev) for k, v in m.tensors.items()}, m.meta
        personal = {k: {n: v.to(dev) for n, v in wire.decode(down.personal[k]).tensors.items()}
                    for k in clients if k in down.personal}
        spec = ctx.param_spec
        job = CohortJob(ctx.model, {k: v for k, v in received.items() if k in spec}, ctx.buffers, list(clients),
                        ctx.data, self.schedule(rnd), self.algorithm, ctx.seed, rnd, dev, task=ctx.task,
                        reparam=self.codec.reparam(rnd) if self.codec is not None else None,
                        extras={k: v for k, v in received.items() if k not in spec}, personal=personal,
                        client_states=self.client_states, optimizer_states=self.optimizer_states)
        return job, meta

    def run(self, rnd: int, down: Broadcast, clients: Sequence[int]) -> list[tuple[int, Bytes]]:
        t0 = time.perf_counter()
        job, meta = self.job(rnd, down, clients)
        reports = self.engine.run(job)
        t1 = time.perf_counter()
        uploads: list[tuple[int, Bytes]] = []
        self.last_failures = {}
        for rep in reports:
            rep = self.algorithm.client_finish(job, rep)
            states = self.pipeline_states.get(rep.client, {})
            try:
                msg = self.pipeline.run(rep, states, RoundInfo(rnd, rep.client, meta))
            except (ValueError, ArithmeticError) as e:  # e.g. a NaN update cannot be encrypted: this client only
                log.warning("round %d: client %d could not send its update: %s", rnd, rep.client, e)
                self.last_failures[rep.client] = str(e)
                continue
            if states:
                self.pipeline_states[rep.client] = states
            uploads.append((rep.client, msg))
        self.last_seconds = {"train": t1 - t0, "encode": time.perf_counter() - t1}
        return uploads

    def failures(self) -> dict[int, str]:
        """The clients of the last round whose pipeline failed (they sent nothing), with the reason."""
        return dict(self.last_failures)

    def round_metrics(self) -> dict[str, Any]:
        return {}  # in one process every client replies; nothing is measured beyond the loop's own record


@dataclass
class Run:
    """A composed run: the frozen context, the algorithm, the server side, the in-process client side and the
    initial server state, plus the parts a runtime reports on."""

    cfg: RunConfig
    ctx: RunContext
    algorithm: Algorithm
    server: Server
    clients: SimulatedClients
    state: ServerState
    engine_note: str = ""
    dp: DPFedAvg | None = None
    secagg: SecureAggregation | None = None
    codec: UpdateCodec | None = None
    attack: Attack | None = None
    planner: CohortPlanner | None = None

    @property
    def headline(self) -> str:
        """The metric the run is judged by: the algorithm's, else its task's."""
        return self.algorithm.headline or self.ctx.task.headline


def _engine(cfg: RunConfig, algorithm: Algorithm, model: torch.nn.Module) -> tuple[Engine, str]:
    if cfg.engine.name == "vectorized":
        why = fallback_reason(algorithm, model)
        if why:
            log.warning("falling back to the sequential engine: %s", why)
            return build_engine("sequential", None), f"fell back to sequential: {why}"
    return build_engine(cfg.engine.name, cfg.engine.params), ""


def default_threads() -> int:
    """The intra-op thread default: the cores this process may use that are not already busy (the 1-minute load
    average subtracted, at least 1). With every core taken by default, a run on a machine that other jobs keep
    busy collapses: OpenMP threads spin waiting for each other (W1 measured 200-300 s instead of ~22 s while two
    other jobs ran). Set ``threads`` to override."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, cores - int(busy + 0.5)))


def _aggregator(cfg: RunConfig, algorithm: Algorithm, ctx: RunContext, dp: DPFedAvg | None,
                sa: SecureAggregation | None) -> Aggregator:
    """Step 5's rule: the algorithm's own, else the ciphertext sum, central DP, a robust rule or the weighted
    mean (the compatibility rules guarantee at most one applies)."""
    own = algorithm.make_aggregator(ctx)
    weighting = algorithm.p.weighting
    if own is not None:
        return own
    if sa is not None:
        return CiphertextSum(sa)
    if dp is not None:
        return DPAggregator(dp)
    if cfg.aggregator.name != "mean" or cfg.aggregator.params.get("max_norm") is not None:
        return RobustAggregator(cfg.aggregator.name, cfg.aggregator.params, weighting)
    return WeightedMean(weighting, norm_guard=cfg.aggregator.params.get("norm_guard"),
                        steps=lambda rnd, n: algorithm.local_schedule(ctx.schedule, rnd).num_steps(n))


def _check_inputs(cfg: RunConfig, model: torch.nn.Module, src: Any, device: torch.device) -> None:
    """One test sample through the model (eval mode, no gradient, no random draws): a model that cannot take
    the dataset's inputs (an mlp on token ids) is a config error found before anything is written, not a
    traceback in round 1."""
    x = getattr(src, "test_x", None)
    if not isinstance(x, torch.Tensor) or not len(x):
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x[:1].to(device))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError([f"model / data.dataset: model {cfg.model.name!r} cannot take the inputs of dataset "
                           f"{cfg.data.dataset.name!r} ({str(x.dtype).replace('torch.', '')}, shape "
                           f"{list(x.shape[1:])}): {first}"]) from None
    finally:
        model.train(was_training)


def build_run(cfg: RunConfig, *, data: Any = None, engine: Engine | None = None,
              secure_aggregation: Any = None) -> Run:
    """Compose a run from a validated config. ``data`` replaces the configured federated data (e.g. a user's
    own), ``engine`` the configured engine, ``secure_aggregation`` the config's section."""
    sa_cfg = secure_aggregation if secure_aggregation is not None else cfg.secure_aggregation
    errors = compat.check(features(cfg, secure_aggregation=sa_cfg))
    if errors:  # a run built from Python without validate_config's checks
        raise ConfigError(errors)
    torch.set_num_threads(cfg.threads or default_threads())
    retain_freed_memory()  # a round's buffers reused, not faulted in fresh (fedloom/heap.py)
    device = torch.device(cfg.device)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["device: cuda, but torch sees no CUDA device on this machine; use device=cpu"])
    # -- data: built, then changed by the algorithm (FAug), then poisoned by simulated attackers
    d = cfg.data
    if data is None and d.dataset.name in ENVIRONMENTS:  # not labelled data: e.g. RL environments
        env = ENVIRONMENTS.entry(d.dataset.name)
        data = env.factory(env.params(**d.dataset.params), d.num_clients, cfg.seed)
    if data is None:
        data = build_federated(d.dataset.name, d.dataset.params, d.num_clients, d.partition.name, d.partition.params,
                               cfg.seed)
    algorithm = build_algorithm(cfg.algorithm.name, cfg.algorithm.params)
    data = algorithm.prepare_data(data, cfg.seed)
    attack = Attack(cfg.attack.name, cfg.attack.params, data.num_clients, cfg.seed) if cfg.attack else None
    if attack is not None:
        attack.poison_data(data)  # label flipping rewrites the attackers' labels (a private copy)
    src = data.source
    if device.type != "cpu" and getattr(src, "train_x", None) is not None:
        src.train_x, src.train_y = src.train_x.to(device), src.train_y.to(device)
    # -- the model, from its own derived seed (the same initial model in every engine and runtime)
    torch.manual_seed(derive_seed(cfg.seed, "model-init"))
    model = build_model(cfg.model.name, cfg.model.params, src.input_shape, src.num_classes).to(device)
    _check_inputs(cfg, model, src, device)
    c = cfg.client
    base = LocalSchedule(lr=c.lr, epochs=c.epochs, batch_size=c.batch_size, local_steps=c.local_steps,
                         momentum=c.momentum, weight_decay=c.weight_decay, optimizer=c.optimizer.name,
                         betas=tuple(c.optimizer.betas), eps=c.optimizer.eps)
    server_opt = build_server_optimizer(cfg.server_optimizer.name, cfg.server_optimizer.params)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    client_states: dict[int, Any] = {}
    ctx = RunContext(cfg.seed, cfg.rounds, cfg.cohort_size, device, model,
                     {k: v.detach().clone() for k, v in model.named_buffers()}, spec_of(params), data,
                     build_task(cfg.task.name), base, server_opt, cfg.eval_batch_size, MappingProxyType(client_states),
                     cfg.model.name, dict(cfg.model.params))
    algorithm.bind(ctx)
    upload = algorithm.upload_spec(ctx.param_spec)  # what every client message must carry
    # -- the client pipeline: attack simulation -> local DP -> codecs, then the encoder (plain or Paillier)
    planner = CohortPlanner(cfg.system, data.client_sizes, cfg.cohort_size, algorithm.local_schedule(base, 1).epochs,
                            cfg.seed)
    dp = (DPFedAvg(cfg.privacy, data.num_clients, cfg.cohort_size, cfg.seed, sampling_rate=planner.max_inclusion())
          if cfg.privacy else None)
    codec = UpdateCodec([(x.name, x.params) for x in cfg.codecs], upload, cfg.seed) if cfg.codecs else None
    stages: list[ClientStage] = []
    if attack is not None:
        stages.append(AttackStage(attack))
    if dp is not None and dp.cfg.mode == "local":
        stages.append(LocalDPStage(dp.cfg, cfg.seed))
    if codec is not None:
        stages.append(CodecStage(codec))
    sa = build_secure_aggregation(sa_cfg, upload, data.client_sizes, cfg.cohort_size, algorithm.p.weighting,
                                  cfg.seed, device)
    encoder: Encoder = SecAggEncoder(sa) if sa is not None else PlainEncoder()
    # -- the server pipeline: decode + validate each message, then one aggregator
    aggregator = _aggregator(cfg, algorithm, ctx, dp, sa)
    settings = aggregator.round_settings if isinstance(aggregator, DPAggregator) else None
    pipeline = ServerPipeline(stages, encoder, upload, algorithm.check_report, device,
                              max_samples=lambda k: algorithm.max_samples(ctx, k))
    server = Server(ctx, algorithm, planner, pipeline, aggregator, cfg.eval_every, round_settings=settings)
    eng, note = (engine, "") if engine is not None else _engine(cfg, algorithm, model)
    lr_schedule = build_lr_schedule(c.lr_schedule.name, c.lr_schedule.params) if c.lr_schedule is not None else None
    clients = SimulatedClients(ctx, algorithm, eng, ClientPipeline(stages, encoder), client_states, lr_schedule, codec,
                               optimizer_states={} if c.optimizer.persist else None)
    state = ServerState(params, server_opt.init(params), 0, algorithm.init_state(ctx))
    return Run(cfg, ctx, algorithm, server, clients, state, note, dp, sa, codec, attack, planner)

"""Data-parallel local SGD on torch.distributed: mini-batch, local, post-local and hierarchical local SGD.

K workers (ranks) start from the same model x_0 and each run SGD on its own mini-batches (local batch b):

* ``minibatch`` -- the baseline: gradients are all-reduced (averaged) every step, i.e. mini-batch SGD with
  global batch K*b (Lin et al. 2020's "large-batch" baseline).
* ``local`` -- Stich 2019, Algorithm 1: x_{t+1/2}^k = x_t^k - eta_t g_t^k; if t+1 is in the sync set
  I_T = {H, 2H, ...}, x_{t+1}^k = (1/K) sum_j x_{t+1/2}^j, else x_{t+1}^k = x_{t+1/2}^k.
* ``postlocal`` -- Lin et al. 2020 (post-local SGD): H_(t) = 1 (gradient all-reduce = mini-batch SGD) for
  t <= t' (``post_local_from``, e.g. the first learning-rate decay), then parameter averaging every H steps.
* ``hierarchical`` -- Lin et al. 2020, Sec. "hierarchical local SGD": after the same warm-up, average inside
  each group of ``group_size`` consecutive ranks every H steps and across all ranks every H*H_b steps
  (``global_every`` = H_b); groups are ``torch.distributed.new_subgroups``.

Only parameters are averaged: momentum buffers stay local, as in Lin et al.'s ``pcode/optim/local_sgd.py``.
Sync times use the absolute step t (1-based, counted after the t-th local step) like the reference code's
``local_index % local_step == 0``; ``post_local_from`` must therefore be a multiple of H.

``averager="torch"`` delegates parameter averaging to PyTorch's ``PeriodicModelAverager`` (local,
post-local) and ``HierarchicalModelAverager`` (hierarchical), torch.distributed.algorithms.model_averaging.
Where they do not fit as-is: (1) they count steps from 0 and average after the *first* step when
warmup_steps=0, whereas Stich's I_T starts at H -- we set their ``step`` counter to t before each call;
(2) they do nothing during warm-up (they expect DDP to all-reduce gradients), so the H=1 phase of post-local
SGD is fedloom's gradient all-reduce; (3) they issue ``dist.all_reduce`` themselves, so the
communication counters record the averaging our schedule predicts (a test checks both averagers give the
same model). ``averager="fedloom"`` (default) runs the same schedule with :class:`fedloom.distributed.comm.Comm`.

Data (all seeded via :mod:`fedloom.rng`): ``sampling="global"`` (Lin et al.'s code: reshuffle and
repartition every epoch) -- epoch e is a permutation from ``torch_generator(seed, "dp-epoch", e)``, cut into
global batches of K*b, rank r takes rows [r*b, (r+1)*b) of each; so K ranks of mini-batch SGD equal one rank
with batch K*b. ``sampling="shard"`` -- each rank owns a fixed iid shard (fedloom's ``iid`` partitioner over
K clients) and draws the steps of simulator round j (:func:`simulator_round`) with
``client_batches(..., torch_generator(seed, "batches", j, r))``, exactly what the simulator's ``localsgd`` /
``postlocal`` / ``hierarchical`` clients do in round j -- so without momentum these runs equal the simulator.

Example (one machine, 2 CPU processes)::

    torchrun --standalone --nproc-per-node 2 -m fedloom.distributed.launch algorithm=local local_steps=8 steps=200
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedloom.core.types import LocalSchedule, client_batches
from fedloom.distributed.comm import Comm
from fedloom.rng import derive_seed, torch_generator


class LocalSGDConfig(BaseModel):
    """One data-parallel training run (every field validated; errors name the field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    algorithm: Literal["minibatch", "local", "postlocal", "hierarchical"] = "local"
    local_steps: int = Field(4, description="H: local steps between parameter averagings (>= 1)")
    post_local_from: int = Field(0, ge=0, description="t': mini-batch SGD (H=1) for t <= t', then local")
    group_size: int | None = Field(None, description="hierarchical: ranks per group (consecutive ranks)")
    global_every: int = Field(2, description="hierarchical H_b: global averaging every H*H_b steps (>= 1)")
    dataset: str = "digits"
    dataset_params: dict[str, Any] = Field(default_factory=dict)
    model: str = "logreg"
    model_params: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(16, ge=1, description="b: local mini-batch per worker")
    steps: int = Field(100, ge=1, description="T: total local steps per worker")
    lr: float = Field(0.1, gt=0)
    lr_milestones: list[int] = Field(default_factory=list, description="steps at which lr is multiplied by lr_decay")
    lr_decay: float = Field(0.1, gt=0)
    lr_inverse_a: float | None = Field(None, gt=0, description="Stich's eta_t = lr * a / (a + t) when set")
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0, description="l2 regulariser lambda (loss + lambda/2 ||x||^2)")
    sampling: Literal["global", "shard"] = "global"
    seed: int = 0
    averager: Literal["fedloom", "torch"] = "fedloom"
    latency_s: float = Field(0.0, ge=0, description="simulated link: seconds per collective")
    bandwidth_Bps: float | None = Field(None, gt=0, description="simulated link: bytes/second (None = infinite)")
    eval_every: int = Field(0, ge=0, description="evaluate the averaged model every N steps (0 = only at the end)")

    @model_validator(mode="after")
    def _check(self) -> LocalSGDConfig:
        if self.local_steps <= 0:
            raise ValueError(f"local_steps: H must be >= 1, got {self.local_steps}")
        if self.global_every <= 0:
            raise ValueError(f"global_every: H_b must be >= 1, got {self.global_every}")
        if self.algorithm in ("postlocal", "hierarchical") and self.post_local_from % self.local_steps:
            raise ValueError(f"post_local_from: t'={self.post_local_from} must be a multiple of "
                             f"local_steps H={self.local_steps} (sync times are t % H == 0)")
        if self.algorithm == "hierarchical" and self.group_size is None:
            raise ValueError("group_size: hierarchical local SGD needs group_size (ranks per group)")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size: must be >= 1, got {self.group_size}")
        return self

    def check_world(self, world_size: int) -> None:
        """Launch-time checks that depend on the number of ranks (clear errors before any collective)."""
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        if self.algorithm == "hierarchical" and world_size % self.group_size:  # type: ignore[operator]
            raise ValueError(f"group_size: world size {world_size} is not divisible into groups of "
                             f"{self.group_size} ranks")


# -- the schedule ---------------------------------------------------------------------------------------------
def sync_kind(cfg: LocalSGDConfig, t: int) -> str | None:
    """What happens at step t (1-based): ``grad`` (all-reduce gradients before the update), ``global`` /
    ``group`` (average parameters after the update), or None (purely local step)."""
    H = cfg.local_steps
    if cfg.algorithm == "minibatch":
        return "grad"
    if cfg.algorithm in ("postlocal", "hierarchical") and t <= cfg.post_local_from:
        return "grad"
    if cfg.algorithm == "hierarchical":
        if t % (H * cfg.global_every) == 0:
            return "global"
        return "group" if t % H == 0 else None
    return "global" if t % H == 0 else None


def lr_at(cfg: LocalSGDConfig, t: int) -> float:
    """Learning rate of step t (1-based): step decay at ``lr_milestones`` or Stich's eta_t = lr*a/(a+t)."""
    if cfg.lr_inverse_a is not None:
        return cfg.lr * cfg.lr_inverse_a / (cfg.lr_inverse_a + t - 1)
    return cfg.lr * cfg.lr_decay ** sum(t > m for m in cfg.lr_milestones)


# -- the data stream --------------------------------------------------------------------------------------------
class BatchStream:
    """Rank ``rank``'s sample indices for steps 1, 2, ... (see the module docstring for both modes)."""

    def __init__(self, cfg: LocalSGDConfig, train_y: torch.Tensor, rank: int, world: int):
        self.cfg, self.rank, self.world, self.n = cfg, rank, world, len(train_y)
        b = cfg.batch_size
        if cfg.sampling == "global":
            self.steps_per_epoch = self.n // (world * b)
            if self.steps_per_epoch < 1:
                raise ValueError(f"batch_size: global batch {world}x{b} exceeds the {self.n} training samples")
        else:
            from fedloom.data.partition import partition

            shards = partition(train_y.numpy(), world, "iid", None, cfg.seed)
            self.shard = torch.as_tensor(shards[rank], dtype=torch.int64)
            self.sched = LocalSchedule(lr=cfg.lr, batch_size=b, local_steps=cfg.local_steps)
            self.steps_per_epoch = max(len(self.shard) // min(b, len(self.shard)), 1)
        self._cache: tuple[int, Any] = (-1, None)

    def indices(self, t: int) -> torch.Tensor:
        cfg, b = self.cfg, self.cfg.batch_size
        if cfg.sampling == "global":
            e, s = divmod(t - 1, self.steps_per_epoch)
            if self._cache[0] != e:
                self._cache = (e, torch.randperm(self.n, generator=torch_generator(cfg.seed, "dp-epoch", e)))
            off = s * self.world * b + self.rank * b
            return self._cache[1][off : off + b]
        rnd, s, h = simulator_round(cfg, t)  # the simulator's round that step t belongs to
        if self._cache[0] != rnd:
            gen = torch_generator(cfg.seed, "batches", rnd, self.rank)
            self._cache = (rnd, client_batches(len(self.shard), replace(self.sched, local_steps=h), gen))
        return self.shard[self._cache[1][s]]


def simulator_round(cfg: LocalSGDConfig, t: int) -> tuple[int, int, int]:
    """(round, step within it, steps in it) of global step t (1-based) in fedloom's simulator: rounds end at
    synchronizations -- blocks of H steps, preceded for post-local / hierarchical SGD by t' one-step rounds
    (:mod:`fedloom.algorithms.local_family`)."""
    tp = cfg.post_local_from if cfg.algorithm in ("postlocal", "hierarchical") else 0
    if t <= tp:
        return t, 0, 1
    j, s = divmod(t - tp - 1, cfg.local_steps)
    return tp + j + 1, s, cfg.local_steps


def build(cfg: LocalSGDConfig, device: torch.device):
    """(data source, model) with the simulator's seeding: the model is initialised from derive_seed(seed, "model-init")."""
    from fedloom.data.datasets import load_dataset
    from fedloom.models import build_model

    src = load_dataset(cfg.dataset, cfg.dataset_params)
    torch.manual_seed(derive_seed(cfg.seed, "model-init"))
    model = build_model(cfg.model, cfg.model_params, src.input_shape, src.num_classes).to(device)
    return src, model


def evaluate(model, x: torch.Tensor, y: torch.Tensor, device, batch: int = 4096) -> tuple[float, float]:
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch].to(device))
            yb = y[i : i + batch].to(device)
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    return loss / max(len(y), 1), correct / max(len(y), 1)


def _torch_averager(cfg: LocalSGDConfig, world: int):
    from torch.distributed.algorithms.model_averaging.averagers import (
        PeriodicModelAverager,
    )
    from torch.distributed.algorithms.model_averaging.hierarchical_model_averager import (
        HierarchicalModelAverager,
    )

    if cfg.algorithm == "minibatch":
        return None
    if cfg.algorithm == "hierarchical":
        H = cfg.local_steps
        sizes = OrderedDict([(H, cfg.group_size), (H * cfg.global_every, world)])
        if cfg.group_size == world or cfg.global_every == 1:  # one level only: a periodic averager
            return PeriodicModelAverager(period=H if cfg.group_size == world else H * cfg.global_every)
        return HierarchicalModelAverager(sizes)
    import warnings

    with warnings.catch_warnings():  # period 1 is legal here (it is the H=1 ablation)
        warnings.simplefilter("ignore")
        return PeriodicModelAverager(period=cfg.local_steps)


def train(cfg: LocalSGDConfig, device: torch.device | str | None = None) -> dict[str, Any]:
    """Run ``cfg`` on this rank of an initialised default process group; every rank must call it.

    Returns (on every rank) the final averaged parameters, the evaluation history, communication counts
    (in total and per epoch) and wall time.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg.check_world(world)
    device = torch.device(device or ("cuda" if dist.get_backend() == "nccl" else "cpu"))
    src, model = build(cfg, device)
    x_all, y_all = src.train_x.to(device), src.train_y.to(device)
    stream = BatchStream(cfg, src.train_y, rank, world)
    params = [p for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                          weight_decay=cfg.weight_decay)
    comm = Comm(cfg.latency_s, cfg.bandwidth_Bps)
    group = None
    if cfg.algorithm == "hierarchical" and cfg.group_size != world:
        group, _ = dist.new_subgroups(group_size=cfg.group_size)
    averager = _torch_averager(cfg, world) if cfg.averager == "torch" else None
    payload = sum(p.numel() * p.element_size() for p in params)
    history = []
    t0 = time.perf_counter()
    for t in range(1, cfg.steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, t)
        idx = stream.indices(t).to(device)
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        loss.backward()
        kind = sync_kind(cfg, t)
        if kind == "grad":  # mini-batch SGD: average gradients, then the (identical) update on every rank
            comm.average_([p.grad for p in params], "grad")
        opt.step()
        if kind in ("global", "group"):
            if averager is not None:
                averager.step = t  # PyTorch counts from 0; Stich's I_T = {H, 2H, ...} counts from 1
                averager.average_parameters(params)
                comm.record(kind, payload, world if kind == "global" else cfg.group_size)  # type: ignore[arg-type]
            else:
                with torch.no_grad():
                    comm.average_([p.data for p in params], kind, group if kind == "group" else None)
        if cfg.eval_every and t % cfg.eval_every == 0 and t < cfg.steps:
            history.append(_eval_averaged(model, params, src, device, t, comm))
    wall = time.perf_counter() - t0
    final = _eval_averaged(model, params, src, device, cfg.steps, comm, keep=True)  # returns the averaged model
    history.append(final)
    epochs = cfg.steps / stream.steps_per_epoch
    stats = comm.stats.as_dict()
    return {"rank": rank, "world": world, "params": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "history": history, "comm": stats, "epochs": epochs, "wall_s": wall,
            "allreduces_per_epoch": stats["allreduces"] / epochs, "wire_bytes_per_epoch": stats["wire_bytes"] / epochs,
            "final": final}


def _eval_averaged(model, params, src, device, t: int, comm: Comm, keep: bool = False) -> dict[str, Any]:
    """Test metrics of the *average* of the workers' models (not counted as training communication)."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        flat = torch.cat([p.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        off = 0
        for p in params:
            p.copy_(flat[off : off + p.numel()].view_as(p))
            off += p.numel()
    loss, acc = evaluate(model, src.test_x, src.test_y, device)
    rec = {"step": t, "test_loss": loss, "test_accuracy": acc, "allreduces": comm.stats.allreduces,
           "wire_bytes": comm.stats.wire_bytes}
    if not keep:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return rec

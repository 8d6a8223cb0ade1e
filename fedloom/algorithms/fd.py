"""Federated distillation (FD): Jeong et al. 2018, "Communication-Efficient On-Device Machine Learning:
Federated Distillation and Augmentation under Non-IID Private Data" (arXiv 1811.11479), Algorithm 1.

Notation follows the paper: F(w, b) is the softmax output of device i's model on sample b, phi(p, q) the
cross-entropy, gamma the distillation weight, M devices, L labels. Per global iteration k:

1. local phase, device i, n steps: w <- w - eta * grad{ phi(F(w,b), y_b) + gamma * phi(F(w,b), Fhat_{k,y_b}^(i)) },
   and accumulate F_{k,y_b}^(i) += F(w,b), cnt_{k,y_b}^(i) += 1 (:class:`LogitAccumulator`);
2. upload the L local-average vectors Fbar_{k,l}^(i) = F_{k,l}^(i) / cnt_{k,l}^(i) (an L x L matrix);
3. server: Fbar_{k,l} = sum_i Fbar_{k,l}^(i), and device i's teacher
   Fhat_{k+1,l}^(i) = (Fbar_{k,l} - Fbar_{k,l}^(i)) / (M - 1) (:func:`teachers`).

Choices the paper leaves open (``shared/papers.md`` section 2, [D]):

* gamma = 0 in the first global iteration (there is no teacher yet);
* a label a device has no samples of (cnt = 0) is *left out* of the sums and of the denominator: its
  uploaded row is all zeros, and the teacher row of label l for device i is the mean over the *other*
  devices that do hold l. A row is "present" iff it sums to ~1 (softmax averages do), so no extra count
  vector travels: the payload stays exactly L x L float32 in each direction, independent of the model size;
* if no other device holds label l, device i's teacher row l is all zeros, which makes the distillation term
  of those samples exactly 0 (phi(p, 0) = -sum 0 * log p = 0);
* accumulators are reset every global iteration (they are indexed by k);
* with partial participation the teacher uses the last iteration's uploads; a device that did not upload gets
  the mean of all of them. An upload that is not per-label softmax averages (e.g. a Byzantine device's) is left
  out of every teacher and listed in the round's ``fd_invalid``.

The ``fd`` algorithm below runs this in fedloom's round loop with one model per device (``models``: a list of
architectures cycled over devices, so devices may differ), optional FAug (:mod:`fedloom.algorithms.faug`) and
the mean of the devices' test accuracies as ``test_accuracy``.

Example::

    acc = LogitAccumulator(10)
    acc.add(logits.softmax(1), y)               # during local training
    up = acc.averages()                          # [L, L] upload
    T = teachers(torch.stack([up_0, up_1, up_2]))   # [M, L, L]: T[i] goes to device i
    loss, ce, kd = fd_loss(logits, y, T[i], gamma=1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.func import functional_call

from fedloom.algorithms.faug import FAugParams, run_faug
from fedloom.core.algorithm import AlgorithmParams, CustomClientAlgorithm, Traits
from fedloom.core.types import Aggregate, ClientReport, Params, ServerState
from fedloom.metrics.evaluation import evaluate_model
from fedloom.models import build_model
from fedloom.optim import sgd_step_
from fedloom.registry import ALGORITHMS, MODELS
from fedloom.rng import derive_seed

log = logging.getLogger("fedloom")

PRESENT_MIN = 0.5  # a local-average row of a held label sums to 1; an absent label's row is all zeros


class LogitAccumulator:
    """Per-label sums of softmax outputs and per-label counts over one global iteration (Alg. 1, step 1)."""

    def __init__(self, num_labels: int, device: torch.device | str = "cpu"):
        if num_labels < 2:
            raise ValueError(f"FD needs at least 2 labels, got {num_labels}")
        self.L = num_labels
        self.sums = torch.zeros(num_labels, num_labels, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_labels, dtype=torch.float64, device=device)

    def add(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        """F_{y_b} += F(w, b) and cnt_{y_b} += 1 for every sample b of the batch (``probs`` [B, L], rows sum to 1)."""
        if probs.dim() != 2 or probs.shape[1] != self.L or probs.shape[0] != y.shape[0]:
            raise ValueError(f"probs must be [B, {self.L}] matching y [B]; got {tuple(probs.shape)} and {tuple(y.shape)}")
        probs = probs.detach().to(self.sums.dtype)
        self.sums.index_add_(0, y, probs)
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=self.counts.dtype))

    def averages(self) -> torch.Tensor:
        """Fbar_l = F_l / cnt_l as float32 [L, L]; rows of labels with cnt_l = 0 are all zeros (left out)."""
        return local_averages(self.sums, self.counts)


def local_averages(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-label averages Fbar_l = F_l / cnt_l (Alg. 1, step 2); zero rows where cnt_l = 0."""
    avg = sums / counts.clamp_min(1).unsqueeze(1)
    return torch.where((counts > 0).unsqueeze(1), avg, torch.zeros_like(avg)).to(torch.float32)


def present_labels(avgs: torch.Tensor) -> torch.Tensor:
    """Which labels a device's uploaded averages cover: bool [..., L], True where the row sums to ~1."""
    return avgs.sum(-1) > PRESENT_MIN


def teachers(avgs: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Every device's teacher from the uploaded averages ``avgs`` [M, L, L] (Alg. 1, step 3).

    Fhat^(i)_l = (sum_j Fbar^(j)_l - Fbar^(i)_l) / (M - 1), where the sum and the count M - 1 run only over
    devices that hold label l (``present`` [M, L], default :func:`present_labels`). Rows without any other
    holder are zeros. Returns float32 [M, L, L].
    """
    if avgs.dim() != 3 or avgs.shape[1] != avgs.shape[2]:
        raise ValueError(f"avgs must be [M, L, L], got {tuple(avgs.shape)}")
    a = avgs.to(torch.float64)
    pres = present_labels(avgs) if present is None else present.to(torch.bool)
    pm = pres.to(a.dtype).unsqueeze(-1)  # [M, L, 1]
    total = (a * pm).sum(0, keepdim=True)  # [1, L, L]: sum over devices that hold l
    n = pm.sum(0, keepdim=True)  # [1, L, 1]
    others = n - pm  # devices other than i that hold l
    t = (total - a * pm) / others.clamp_min(1)
    return torch.where(others > 0, t, torch.zeros_like(t)).to(torch.float32)


def teacher_for(avgs: torch.Tensor, own: int | None) -> torch.Tensor:
    """Teacher [L, L] of one device from the uploads ``avgs`` [R, L, L] of the last global iteration.

    ``own`` is the device's row in ``avgs`` (its contribution is removed), or None when it did not upload in
    that iteration (then every uploader is an "other" device).
    """
    if own is not None:
        return teachers(avgs)[own]
    pres = present_labels(avgs).to(torch.float64).unsqueeze(-1)
    n = pres.sum(0)
    t = (avgs.to(torch.float64) * pres).sum(0) / n.clamp_min(1)
    return torch.where(n > 0, t, torch.zeros_like(t)).to(torch.float32)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """phi(F(w,b), q) = -sum_c q_c log F_c(w,b) per sample ([B]); zero where the target row q is all zeros."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1)


def fd_loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None, gamma: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FD's local objective (Alg. 1, step 1), averaged over the batch:
    phi(F(w,b), y_b) + gamma * phi(F(w,b), Fhat_{y_b}).

    Returns (loss, cross-entropy part, distillation part). With ``gamma == 0`` or no teacher the loss is
    exactly plain cross-entropy (the distillation part is reported but not added).
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    ce = F.cross_entropy(logits, y)
    if teacher is None:
        return ce, ce.detach(), torch.zeros((), device=logits.device)
    if teacher.shape != (logits.shape[1], logits.shape[1]):
        raise ValueError(f"teacher must be [{logits.shape[1]}, {logits.shape[1]}], got {tuple(teacher.shape)}")
    kd = soft_cross_entropy(logits, teacher.to(logits.dtype)[y]).mean()
    loss = ce + gamma * kd if gamma > 0 else ce
    return loss, ce.detach(), kd.detach()


def fd_bits_per_message(num_labels: int, bits: int = 32) -> int:
    """The paper's payload of one FD message: L x L logits at 32 bits (Sec. 3, cost accounting)."""
    return num_labels * num_labels * bits


# ---------------------------------------------------------------------------------------------------------------
# FD as a fedloom algorithm: per-device models (heterogeneous architectures allowed), logits on the wire.
# ---------------------------------------------------------------------------------------------------------------

LOGITS = "fd.logits"    # upload: the device's L x L local-average softmax outputs
TEACHER = "fd.teacher"  # personal download: the device's L x L teacher


class ModelSpec(BaseModel):
    """One device architecture: a registered model name and its parameters. Written ``{name: mlp, hidden: [100]}``
    (like the run's ``model``), ``{name: mlp, params: {hidden: [100]}}`` or just ``mlp``."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _fold(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v}
        if isinstance(v, Mapping) and set(v) - {"name", "params"}:
            v = dict(v)
            params = dict(v.pop("params", None) or {})
            params.update({k: v.pop(k) for k in list(v) if k != "name"})
            v["params"] = params
        return v

    @model_validator(mode="after")
    def _known(self) -> ModelSpec:
        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; allowed: {', '.join(MODELS.names())}")
        MODELS.entry(self.name).params(**self.params)  # raises with the offending field
        return self


class FDParams(AlgorithmParams):
    gamma: float = Field(1.0, ge=0, description="weight of the distillation regulariser phi(F(w,b), teacher[y_b]); "
                         "0 in the first global iteration regardless")
    models: list[ModelSpec] | None = Field(None, min_length=1, description="device architectures, cycled over "
                                           "devices (device k gets models[k % len]); null = the run's model")
    faug: FAugParams | None = Field(None, description="FAug (fedloom.distill.faug) applied to the devices' data "
                                    "before the first round; null = off")


@ALGORITHMS.register("fd", FDParams, "federated distillation (Jeong et al. 2018): per-label logits, no model on the wire")
class FederatedDistillation(CustomClientAlgorithm):
    """Jeong et al. 2018, Algorithm 1 (FD). Each device keeps its own model (``job.client_states[k]``; the
    architectures may differ, see ``models``), trains it with CE + gamma * CE-to-teacher, and uploads only its
    L x L per-label average softmax outputs; the server returns each device its teacher (sum of the others'
    averages) / (M - 1). No model travels, so the payload does not depend on the model size.

    Reported accuracy is the mean test accuracy of the devices' own models (``test_accuracy``), with min/max.
    """

    p: FDParams
    traits = Traits(plain_mean=False, uploads_model=False)

    def __init__(self, params: FDParams):
        super().__init__(params)
        self.num_labels: int | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.seed = 0
        self.default_spec: ModelSpec | None = None
        self._templates: dict[int, torch.nn.Module] = {}
        self.faug_report = None
        self._faug_reported = False

    # -- set-up ------------------------------------------------------------------------------------------
    def bind(self, ctx) -> None:
        src = ctx.data.source
        self.num_labels, self.input_shape, self.seed = src.num_classes, tuple(src.input_shape), ctx.seed
        self.default_spec = ModelSpec(name=ctx.model_name, params=dict(ctx.model_params))
        for k in range(min(ctx.num_clients, len(self.p.models or [None]))):
            self.template(k)  # build every architecture now: a spec that does not fit the data fails here

    def prepare_data(self, data: Any, seed: int) -> Any:
        """FAug (if configured) before anything is sized from the data: the devices' target labels are filled
        with samples from the server-trained generator; its costs are reported in the first round's record."""
        if self.p.faug is None:
            return data
        aug, self.faug_report = run_faug(data, self.p.faug, seed)
        return aug

    def spec(self, k: int) -> ModelSpec:
        """Device k's architecture: ``models[k % len(models)]``, or the run's model."""
        if self.p.models:
            return self.p.models[k % len(self.p.models)]
        if self.default_spec is None:
            raise RuntimeError("fd: bind(ctx) was not called and no 'models' are given")
        return self.default_spec

    def template(self, k: int) -> torch.nn.Module:
        i = k % len(self.p.models) if self.p.models else 0
        if i not in self._templates:
            if self.input_shape is None or self.num_labels is None:
                raise RuntimeError("fd: bind(ctx) was not called")
            s = self.spec(k)
            try:
                self._templates[i] = build_model(s.name, s.params, self.input_shape, self.num_labels)
            except ValueError as e:
                raise ValueError(f"fd: models[{i}] ({s.name}) does not fit input {self.input_shape}: {e}") from None
        return self._templates[i]

    def device_init(self, k: int) -> dict[str, Any]:
        """Device k's fresh model (its own seed: devices do not share an initialisation)."""
        s = self.spec(k)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "fd-init", k))
            m = build_model(s.name, s.params, self.input_shape, self.num_labels)
        return {"params": {n: p.detach().clone() for n, p in m.named_parameters()}}

    def device_params(self, states: Mapping[int, Any], k: int) -> Params:
        st = states.get(k)
        return (st if st is not None else self.device_init(k))["params"]

    # -- client ------------------------------------------------------------------------------------------
    def train_client(self, job: Any, k: int) -> ClientReport:
        """Alg. 1, step 1-2 on device k: n local steps on CE + gamma * CE(F, teacher[y]) while accumulating
        per-label softmax outputs; the update is the L x L local-average matrix."""
        task = job
        if self.num_labels is None:
            raise RuntimeError("fd: bind(ctx) was not called")
        sched = task.schedule
        state = task.client_states.get(k) or self.device_init(k)
        template = self.template(k)
        buffers = {n: b.to(task.device) for n, b in template.named_buffers()}
        params = {n: p.detach().clone().to(task.device).requires_grad_(True) for n, p in state["params"].items()}
        bufs = None
        if sched.momentum:
            bufs = state.get("momentum") or {n: torch.zeros_like(p) for n, p in params.items()}
            bufs = {n: b.detach().clone().to(task.device) for n, b in bufs.items()}
        teacher = task.personal.get(k, {}).get(TEACHER)
        gamma = self.p.gamma if teacher is not None and task.round > 1 else 0.0  # gamma = 0 in the first iteration
        if teacher is not None:
            teacher = teacher.to(task.device)
        acc = LogitAccumulator(self.num_labels, task.device)
        cohort = task.data.cohort([k])  # device k's rows (in memory: a view of the training set)
        idx, x_all, y_all = cohort.rows[0], cohort.x, cohort.y
        ce_sum = kd_sum = 0.0
        steps = 0
        names = list(params)
        template.train()
        for s, b in enumerate(task.batches(k)):
            g = idx[b]
            x, y = x_all[g].to(task.device), y_all[g].to(task.device)
            logits = functional_call(template, (params, buffers), (x,))
            loss, ce, kd = fd_loss(logits, y, teacher, gamma)
            grads = torch.autograd.grad(loss, [params[n] for n in names])
            with torch.no_grad():
                sgd_step_(params, dict(zip(names, grads)), bufs, sched, lr=sched.lr_at(s))
            acc.add(logits.detach().softmax(1), y)
            ce_sum, kd_sum, steps = ce_sum + float(ce), kd_sum + float(kd), steps + 1
        new_state = {"params": {n: p.detach().clone() for n, p in params.items()}}
        if bufs is not None:
            new_state["momentum"] = bufs
        task.client_states[k] = new_state
        n_steps = max(steps, 1)
        return ClientReport(k, {LOGITS: acc.averages()}, len(idx), ce_sum / n_steps,
                            {"fd_kd_loss": kd_sum / n_steps, "fd_gamma": gamma})

    # -- what travels ------------------------------------------------------------------------------------
    def upload_spec(self, model_spec):
        """One L x L float32 matrix (read after :meth:`bind`, which sets L)."""
        if self.num_labels is None:
            raise RuntimeError("fd: bind(ctx) was not called")
        return {LOGITS: ((self.num_labels, self.num_labels), torch.float32)}

    def broadcast(self, state) -> Params:
        return {}  # no shared model: each device gets its own teacher (personal)

    def personal(self, state: Any, k: int) -> Params:
        """Device k's teacher from the last global iteration's uploads; nothing before the first upload."""
        fd = state.algo_state.get("fd")
        if not fd or len(fd["clients"]) == 0:
            return {}
        clients = fd["clients"].tolist()
        own = clients.index(k) if k in clients else None
        return {TEACHER: teacher_for(fd["logits"], own)}

    # -- server ------------------------------------------------------------------------------------------
    def make_aggregator(self, ctx) -> TeacherInputs:
        return TeacherInputs(self.num_labels or 0)

    def server_step(self, ctx, state, agg):
        fd = {"logits": agg.update["logits"].cpu(), "clients": agg.update["clients"].cpu()}
        covered = int(present_labels(fd["logits"]).any(0).sum()) if len(fd["logits"]) else 0
        rec: dict[str, Any] = {"fd_labels_covered": covered}
        if self.faug_report is not None and not self._faug_reported:
            rec.update(self.faug_report.summary())
            self._faug_reported = True
        return replace(state, algo_state={**state.algo_state, "fd": fd}), rec

    def evaluate(self, ctx, state) -> dict[str, Any]:
        """Mean (min, max) test accuracy and loss of the devices' own models."""
        src = ctx.data.source
        accs, losses = [], []
        for k in range(ctx.num_clients):
            m = self.template(k)
            params = {n: p.to(ctx.device) for n, p in self.device_params(ctx.client_states, k).items()}
            buffers = {n: b.to(ctx.device) for n, b in m.named_buffers()}
            res = evaluate_model(ctx.task, m, params, buffers, src.test_x, src.test_y, ctx.eval_batch_size, ctx.device)
            accs.append(res["test_accuracy"])
            losses.append(res["test_loss"])
        return {"test_accuracy": sum(accs) / len(accs), "test_loss": sum(losses) / len(losses),
                "test_accuracy_min": min(accs), "test_accuracy_max": max(accs)}

    def final_state(self, ctx, state) -> dict[str, Any]:
        """``model.pt`` of an FD run: every device's own model and architecture (there is no global model)."""
        return {"devices": {k: {"spec": self.spec(k).model_dump(),
                                "params": {n: t.cpu() for n, t in self.device_params(ctx.client_states, k).items()}}
                            for k in range(ctx.num_clients)}}


class TeacherInputs:
    """FD's server rule (Alg. 1, step 3 inputs): stack the round's per-label averages with their device ids.
    Every device's averages count equally. An upload that is not a matrix of per-label softmax averages
    (entries outside [0, 1], or a row sum other than 0 or 1) is left out of every teacher and listed in the
    round's ``fd_invalid``."""

    def __init__(self, num_labels: int):
        self.L = num_labels

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports)
        keep, ids, invalid = [], [], []
        for r in reports:
            a = r.update[LOGITS].float()
            rows = a.sum(1)
            ok = (bool((a >= -1e-4).all()) and bool((a <= 1 + 1e-4).all())
                  and bool(((rows - 1).abs() < 1e-3).logical_or(rows.abs() < 1e-6).all()))
            if ok:
                keep.append(a)
                ids.append(r.client)
            else:
                log.warning("fd: device %d uploaded a matrix that is not per-label softmax averages; left out", r.client)
                invalid.append(r.client)
        L = self.L or reports[0].update[LOGITS].shape[0]
        update = {"logits": torch.stack(keep) if keep else torch.zeros(0, L, L),
                  "clients": torch.tensor(ids, dtype=torch.int64)}
        return Aggregate(update, reports, {"fd_invalid": invalid})

"""Heterogeneous client widths, HeteroFL-style (Diao, Ding, Tarokh, "HeteroFL: Computation and Communication
Efficient Federated Learning for Heterogeneous Clients", ICLR 2021).

A client with width ratio r trains the nested sub-model that keeps the first ``ceil(r * h_l)`` units of
every hidden layer l. The input and the classes are kept in full. The server averages each coordinate over
the clients that hold it (HeteroFL eq. 2-3): the first units are trained by everyone, the last ones only by
the full-width clients. A coordinate that no client in the cohort holds keeps its value.

Implementation: masks, so that the whole cohort runs on the vectorized engine. Every client keeps the
full-size parameters. Its local objective evaluates the network at ``params * mask_r``, where ``mask_r`` zeroes
the rows of dropped units and the next layer's columns that read them. A dropped unit then outputs
``act(0)`` = 0 for ReLU, and nothing reads it anyway. This is exactly the narrow sub-network, and the
gradients of the dropped coordinates are 0. Per-client widths reach the vmapped loss through
``LocalSGDAlgorithm.client_inputs`` (one ``kept`` vector per client). The server rebuilds each client's mask from the
``width_ratio`` in the client's message meta.

Differences from a deployment, stated plainly:

* the wire carries the full-size update, zeros included, so ``bytes_up`` overstates what a narrow client
  would send;
* the activation must map 0 to 0 (ReLU, Tanh, GELU, LeakyReLU); models are ``mlp`` / ``cnn`` (no BatchNorm,
  so HeteroFL's static-BN question does not arise);
* width assignment: ``fixed`` draws each client's ratio once (from the run seed and client id); ``dynamic``
  draws it again every round (HeteroFL's two modes). ``per_client`` gives the ratios explicitly.
  ``scaler=True`` applies HeteroFL's 1/r scaler to hidden pre-activations during local training only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from fedloom.algorithms.matching import HiddenUnits, hidden_units
from fedloom.core.aggregate import sample_weight
from fedloom.core.algorithm import AlgorithmParams, LocalSGDAlgorithm, Traits
from fedloom.core.types import Aggregate, ClientReport, Params, ServerState
from fedloom.registry import ALGORITHMS
from fedloom.rng import torch_generator


class HeteroFLParams(AlgorithmParams):
    ratios: list[float] = Field(default_factory=lambda: [1.0, 0.5, 0.25], min_length=1,
                                description="width levels r in (0, 1] clients are drawn from")
    proportions: list[float] | None = Field(None, description="probability of each level (default: uniform)")
    per_client: list[float] | None = Field(None, description="explicit ratio of client k at index k (overrides "
                                                             "ratios/proportions)")
    mode: str = Field("fixed", pattern="^(fixed|dynamic)$",
                      description="'fixed': a client's ratio is drawn once; 'dynamic': redrawn every round")
    scaler: bool = Field(False, description="HeteroFL scaler: hidden pre-activations / r during local training")

    @field_validator("ratios", "per_client")
    @classmethod
    def _in_unit(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not 0 < r <= 1 for r in v):
            raise ValueError("width ratios must be in (0, 1]")
        return v

    @model_validator(mode="after")
    def _props(self) -> HeteroFLParams:
        if self.proportions is not None:
            if len(self.proportions) != len(self.ratios):
                raise ValueError(f"proportions has {len(self.proportions)} entries, ratios has {len(self.ratios)}")
            if any(q < 0 for q in self.proportions) or sum(self.proportions) <= 0:
                raise ValueError("proportions must be non-negative and not all 0")
        return self


def kept_units(sizes: tuple[int, ...], ratio: float) -> list[int]:
    """Units a client of width ``ratio`` keeps in each hidden layer: ceil(r * h), at least 1."""
    return [max(1, min(h, math.ceil(ratio * h - 1e-9))) for h in sizes]


def width_mask(shape: torch.Size, name: str, units: HiddenUnits, kept: torch.Tensor | list[int],
               device: torch.device | None = None) -> torch.Tensor | None:
    """0/1 mask of the coordinates of parameter ``name`` a client keeping ``kept[l]`` units holds (None: all).

    ``kept`` may be a (vmapped) tensor: the mask is built from comparisons, so it works under vmap.
    """
    axes = units.axes.get(name)
    if not axes:
        return None
    mask = None
    for ax in axes:
        n = shape[ax.dim]
        view = [1] * len(shape)
        view[ax.dim] = n
        m = (torch.arange(n, device=device) < kept[ax.layer] * ax.span).view(view)
        mask = m if mask is None else mask & m
    return mask


def holder_average(updates: list[Params], weights: list[float], ratios: list[float], units: HiddenUnits) -> Params:
    """Per-coordinate weighted mean over the clients whose sub-model holds the coordinate (0 where none does)."""
    out: Params = {}
    kept = [kept_units(units.sizes, r) for r in ratios]
    for name, ref in updates[0].items():
        num = torch.zeros_like(ref)
        den = torch.zeros_like(ref)
        for u, w, kp in zip(updates, weights, kept):
            m = width_mask(ref.shape, name, units, kp, ref.device)
            mw = torch.full_like(ref, float(w)) if m is None else m.to(ref.dtype) * float(w)
            num.add_(u[name] * mw)
            den.add_(mw.expand_as(ref))
        out[name] = torch.where(den > 0, num / den.clamp_min(1e-30), torch.zeros_like(num))
    return out


@ALGORITHMS.register("heterofl", HeteroFLParams,
                     "HeteroFL: nested sub-models of width r; each coordinate averaged over its holders")
class HeteroFL(LocalSGDAlgorithm):
    """Diao et al. 2021 (HeteroFL). Local SGD on the width-r sub-model (a masked full model, vmap-safe); the
    server averages each coordinate over the clients holding it."""

    p: HeteroFLParams
    traits = Traits(plain_mean=False)
    contract_config = {"algorithm": {"name": "heterofl", "ratios": [1.0, 0.5]}}

    def __init__(self, params: HeteroFLParams):
        super().__init__(params)
        self.units: HiddenUnits | None = None
        self.scaled: set[str] = set()

    def bind(self, ctx) -> None:
        model = ctx.model
        self.units = hidden_units(model)
        # the scaler multiplies hidden Linear/Conv outputs (weights and biases), not norm parameters
        self.scaled = {f"{mn}.{pn}" for mn, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
                       for pn, _ in m.named_parameters(recurse=False)
                       if any(a.dim == 0 for a in self.units.axes.get(f"{mn}.{pn}", ()))}

    # -- client side ---------------------------------------------------------------------------------
    def ratio(self, seed: int, rnd: int, k: int) -> float:
        """Client k's width ratio in round ``rnd`` (deterministic in the run seed)."""
        p = self.p
        if p.per_client is not None:
            if k >= len(p.per_client):
                raise ValueError(f"heterofl: per_client lists {len(p.per_client)} ratios, no ratio for client {k}")
            return float(p.per_client[k])
        keys = ("heterofl-width", k) if p.mode == "fixed" else ("heterofl-width", k, rnd)
        probs = torch.tensor(p.proportions or [1.0] * len(p.ratios), dtype=torch.float64)
        i = int(torch.multinomial(probs, 1, generator=torch_generator(seed, *keys)))
        return float(p.ratios[i])

    def client_inputs(self, task: Any, k: int) -> dict[str, torch.Tensor]:
        assert self.units is not None, "heterofl: bind(ctx) was not called"
        r = self.ratio(task.seed, task.round, k)
        return {"kept": torch.tensor(kept_units(self.units.sizes, r), dtype=torch.int64),
                "ratio": torch.tensor(r, dtype=torch.float32)}

    def client_meta(self, task: Any, k: int) -> dict[str, Any]:
        return {"width_ratio": self.ratio(task.seed, task.round, k)}

    def local_loss(self, data_loss, params, ctx):
        assert self.units is not None
        kept = ctx["kept"]
        sub = {}
        for name, t in params.items():
            m = width_mask(t.shape, name, self.units, kept, t.device)
            v = t if m is None else t * m
            if self.p.scaler and name in self.scaled:
                v = v / ctx["ratio"]
            sub[name] = v
        return data_loss(sub)

    # -- server side ---------------------------------------------------------------------------------
    def check_report(self, report: ClientReport) -> None:
        r = report.meta.get("width_ratio")
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ValueError(f"meta 'width_ratio' must be a number in (0, 1], got {r!r}")

    def make_aggregator(self, ctx) -> HolderAverage:
        if self.units is None:
            raise RuntimeError("heterofl: bind(ctx) was not called")
        return HolderAverage(self.units, self.p.weighting)


class HolderAverage:
    """HeteroFL eq. 2-3: each coordinate averaged over the cohort's clients whose width holds it."""

    def __init__(self, units: HiddenUnits, weighting: str):
        self.units, self.weighting = units, weighting

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports)
        return Aggregate(holder_average([r.update for r in reports], [sample_weight(r, self.weighting) for r in reports],
                                        [float(r.meta["width_ratio"]) for r in reports], self.units), reports)

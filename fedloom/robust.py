"""Byzantine-robust aggregation and attack simulation (Kairouz et al. 2021, sec. 5.1).

Aggregators take the decoded client updates (list of name -> tensor dicts) and their weights and return one
update. ``mean`` is the algorithm's own (weighted) aggregation; the others ignore weights:

* ``median``        coordinate-wise median (Yin et al. 2018); the mean of the two middle values for even n
* ``trimmed_mean``  coordinate-wise mean after removing the ``beta`` fraction largest and smallest values
                    (Yin et al. 2018)
* ``krum``          the update with the smallest sum of squared distances to its n - f - 2 nearest
                    neighbours (Blanchard et al. 2017)
* ``multi_krum``    the mean of the ``m`` updates with the best Krum scores
* ``norm_bound`` (any aggregator) first scales each update to an L2 norm of at most ``max_norm`` (Sun et al.
  2019, "Can you really backdoor federated learning?").
* ``mean`` without ``max_norm`` is :class:`~fedloom.core.aggregate.WeightedMean` with its ``norm_guard`` (default
  10): updates beyond that multiple of the cohort's median norm are rejected per client.

:class:`RobustAggregator` is a server-pipeline :class:`~fedloom.core.aggregate.Aggregator`; :class:`AttackStage`
is a client-pipeline stage that makes the seeded attacker clients misbehave.

Attacks corrupt a fixed, seeded set of clients: ``sign_flip`` (u -> -factor * u), ``scale`` (u -> factor * u),
``gaussian`` (u -> N(0, sigma^2)), and ``label_flip`` (the attackers train on labels y -> C - 1 - y).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.core.aggregate import sample_weight, weighted_mean
from fedloom.core.types import Aggregate, ClientReport, ParamSpec, RoundInfo, ServerState
from fedloom.registry import Registry
from fedloom.rng import numpy_rng, torch_generator

Params = dict[str, torch.Tensor]
AGGREGATORS: Registry = Registry("aggregator")
ATTACKS: Registry = Registry("attack")


class _P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_norm: float | None = Field(None, gt=0, description="norm bounding before aggregation (None = off)")


def flatten(u: Params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in u.values()])


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vec[i : i + v.numel()].view_as(v)
        i += v.numel()
    return out


def clip_to_norm(u: Params, max_norm: float) -> tuple[Params, float]:
    """Scale ``u`` to L2 norm <= max_norm; returns (clipped, original norm)."""
    norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in u.values())))
    s = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return ({k: v * s for k, v in u.items()} if s < 1.0 else u), norm


class MeanParams(_P):
    norm_guard: float | None = Field(10.0, gt=1, description="reject updates whose L2 norm exceeds this multiple of "
                                     "the cohort's median norm (null = off; not applied with max_norm, which clips)")


@AGGREGATORS.register("mean", MeanParams, "the weighted mean (the algorithm's weighting: n_k or uniform), with a "
                      "norm guard")
def mean(updates, weights, p):
    return weighted_mean(updates, weights)


@AGGREGATORS.register("median", _P, "coordinate-wise median")
def median(updates, weights, p):
    x = torch.stack([flatten(u) for u in updates]).sort(0).values
    n = len(updates)
    med = x[n // 2] if n % 2 else 0.5 * (x[n // 2 - 1] + x[n // 2])
    return unflatten(med, updates[0])


class TrimmedParams(_P):
    beta: float = Field(0.2, ge=0, lt=0.5, description="fraction trimmed at each end per coordinate")


@AGGREGATORS.register("trimmed_mean", TrimmedParams, "coordinate-wise trimmed mean")
def trimmed_mean(updates, weights, p):
    x = torch.stack([flatten(u) for u in updates]).sort(0).values
    k = int(math.floor(p.beta * len(updates)))
    return unflatten(x[k : len(updates) - k].mean(0), updates[0])


class KrumParams(_P):
    f: int = Field(1, ge=0, description="number of Byzantine clients tolerated")
    m: int = Field(1, ge=1, description="multi-Krum: average the m best-scored updates")


def krum_scores(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    d = torch.cdist(x.double(), x.double()) ** 2
    k = max(1, n - f - 2)
    # each row: sum of the k smallest distances to *other* updates (skip the zero self-distance)
    return d.sort(1).values[:, 1 : k + 1].sum(1)


@AGGREGATORS.register("krum", KrumParams, "Krum (Blanchard et al. 2017): the most central update")
def krum(updates, weights, p):
    x = torch.stack([flatten(u) for u in updates])
    return unflatten(x[int(krum_scores(x, p.f).argmin())], updates[0])


@AGGREGATORS.register("multi_krum", KrumParams, "multi-Krum: mean of the m best Krum scores")
def multi_krum(updates, weights, p):
    x = torch.stack([flatten(u) for u in updates])
    best = krum_scores(x, p.f).argsort()[: min(p.m, len(updates))]
    return unflatten(x[best].mean(0), updates[0])


class RobustAggregator:
    """A robust rule (or the weighted mean) after optional norm bounding, as a server-pipeline aggregator."""

    def __init__(self, name: str, params: dict | None, weighting: str = "samples"):
        e = AGGREGATORS.entry(name)
        self.name, self.fn, self.p, self.weighting = name, e.factory, e.params(**(params or {})), weighting

    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        if self.p.max_norm is not None:
            updates = [clip_to_norm(u, self.p.max_norm)[0] for u in updates]
        return self.fn(updates, weights, self.p)

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports)
        return Aggregate(self([r.update for r in reports], [sample_weight(r, self.weighting) for r in reports]),
                         reports)


# -- attacks ----------------------------------------------------------------------------------------------
class AttackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.2, ge=0, le=1, description="fraction of all clients that are attackers")
    factor: float = Field(1.0, description="sign_flip / scale multiplier")
    sigma: float = Field(1.0, ge=0, description="gaussian attack standard deviation")


for _name, _doc in (("sign_flip", "attackers send -factor * update"), ("scale", "attackers send factor * update"),
                    ("gaussian", "attackers send N(0, sigma^2) noise"), ("label_flip", "attackers train on y -> C-1-y")):
    ATTACKS.register(_name, AttackParams, _doc)(_name)


class Attack:
    """A seeded set of attacker clients and what they do (simulation only: :class:`AttackStage` runs
    :meth:`corrupt` in the attackers' client pipelines, :meth:`poison_data` rewrites their labels)."""

    def __init__(self, name: str, params: dict | None, num_clients: int, seed: int):
        e = ATTACKS.entry(name)
        self.name, self.p = name, e.params(**(params or {}))
        n_att = int(round(self.p.fraction * num_clients))
        self.attackers = set(numpy_rng(seed, "attackers").choice(num_clients, n_att, replace=False).tolist())
        self.seed = seed

    def poison_data(self, data) -> None:
        """label_flip: rewrite the attackers' training labels (on a private copy of the label tensor)."""
        if self.name != "label_flip" or not self.attackers:
            return
        data.flip_labels(sorted(self.attackers))  # in memory: a private copy of the label tensor, rewritten

    def corrupt(self, client: int, rnd: int, update: Params) -> Params:
        if client not in self.attackers or self.name == "label_flip":
            return update
        if self.name == "sign_flip":
            return {k: -self.p.factor * v for k, v in update.items()}
        if self.name == "scale":
            return {k: self.p.factor * v for k, v in update.items()}
        g = torch_generator(self.seed, "attack-noise", rnd, client)
        return {k: torch.randn(v.shape, generator=g, dtype=v.dtype).to(v.device) * self.p.sigma for k, v in update.items()}


class AttackStage:
    """Client-pipeline stage: an attacker's update is corrupted before it is encoded (honest clients pass)."""

    name = "attack"

    def __init__(self, attack: Attack):
        self.attack = attack

    def init(self, client: int) -> Any:
        return None

    def client(self, report: ClientReport, state: Any, info: RoundInfo) -> tuple[ClientReport, Any]:
        u = self.attack.corrupt(report.client, info.round, report.update)
        return (report if u is report.update else replace(report, update=u)), None

    def server(self, report: ClientReport) -> ClientReport:
        return report

    def out_spec(self, spec: ParamSpec) -> ParamSpec:
        return spec

"""Step 5's one protocol: an :class:`Aggregator` turns the round's validated client reports into one update.

Every server-side rule is an Aggregator: the weighted mean (:class:`WeightedMean`), the robust rules
(:mod:`fedloom.robust`), central DP (:mod:`fedloom.privacy`), the Paillier ciphertext sum
(:mod:`fedloom.crypto.secagg`), and algorithms' own rules (Fed2's feature-paired averaging, matched averaging,
HeteroFL's holder average, per-group means, FD's teachers). The loop calls ``aggregate`` once per round, also
with no reports (an aggregator may still report metrics, e.g. DP's epsilon).

The weighted mean is not robust: one finite but huge update (a client's bug, a diverged local run, an attacker
scaling by 1e30) moves the model anywhere. :func:`norm_guard` (on by default for the mean: ``aggregator:
{name: mean, norm_guard: 10}``) rejects, per client, updates whose L2 norm exceeds that multiple of the cohort's
median norm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from fedloom.core.types import Aggregate, ClientReport, Params, ServerState

log = logging.getLogger("fedloom")

#: the norm guard needs this many non-zero update norms to have a meaningful median; smaller cohorts pass
NORM_GUARD_MIN_CLIENTS = 3


class Aggregator(Protocol):
    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate: ...


def weighted_mean(updates: Sequence[Params], weights: Sequence[float]) -> Params:
    """sum_k w_k u_k / sum_k w_k, accumulated in place (no cohort-sized stack)."""
    total = float(sum(weights))
    if not total > 0:
        raise ValueError(f"weighted mean: the weights sum to {total}; nothing to average")
    acc = {k: torch.zeros_like(v) for k, v in updates[0].items()}
    for u, w in zip(updates, weights):
        for k, v in u.items():
            acc[k].add_(v, alpha=w / total)
    return acc


def sample_weight(report: ClientReport, weighting: str) -> float:
    """A client's weight in the mean: its sample count n_k (McMahan et al.'s n_k / n) or 1 (``uniform``)."""
    return float(report.num_samples) if weighting == "samples" else 1.0


def update_norm(update: Params) -> float:
    """The L2 norm of a whole update: one fused (foreach) pass in the entries' dtype, redone in float64 only when
    that overflows (an update of norm beyond ~1e19 in float32), so the common case costs a few ms per cohort."""
    if not update:
        return 0.0
    tensors = [v.detach() for v in update.values()]
    norm = float(torch.nn.utils.get_total_norm(tensors, 2.0, foreach=True))
    if math.isfinite(norm):
        return norm
    return float(torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(v, dtype=torch.float64) for v in tensors])))


def norm_guard(rnd: int, reports: Sequence[ClientReport], multiple: float,
               steps: Callable[[int, int], int] | None = None) -> tuple[list[ClientReport], list[dict[str, Any]]]:
    """Split ``reports`` into those kept and those rejected (``{"client", "reason"}``) because their update norm
    exceeds ``multiple`` x the cohort's median norm. With ``steps(rnd, num_samples)`` (the local steps the server's
    schedule gives a client of that validated size) each norm is divided by the square root of its steps. Raw
    norms mistake a client that honestly trained on 40x more data than the median (quantity skew) for an outlier;
    norms per step mistake a client with one step for one, when the many-step clients' updates saturate (label
    skew: Fashion-MNIST under Dirichlet(0.1), a 14-image client's one step was 17x the median step). An SGD
    update's norm grows between sqrt(steps) (noise-dominated) and steps (a steady gradient), so per sqrt(step)
    either kind of honest client stays within sqrt(step ratio) of the median. The median is the
    lower median of the non-zero norms (a client with no samples sends a zero update), so fewer than half of the
    clients cannot move it; with fewer than :data:`NORM_GUARD_MIN_CLIENTS` non-zero norms there is no robust
    reference and every report is kept."""
    norms = [(r.norm if r.norm is not None else update_norm(r.update))
             / (math.sqrt(max(1, steps(rnd, r.num_samples))) if steps else 1) for r in reports]
    nonzero = sorted(x for x in norms if x > 0)
    if len(nonzero) < NORM_GUARD_MIN_CLIENTS:
        return list(reports), []
    median = nonzero[(len(nonzero) - 1) // 2]
    bound = multiple * median
    what = "update norm per sqrt(local steps)" if steps else "update norm"
    kept, rejected = [], []
    for r, x in zip(reports, norms):
        if x <= bound:
            kept.append(r)
            continue
        why = f"{what} {x:.3g} exceeds {multiple:g} x the cohort's median {median:.3g} (aggregator.norm_guard)"
        log.warning("round %d: rejected update from client %d: %s", rnd, r.client, why)
        rejected.append({"client": r.client, "reason": why})
    return kept, rejected


class WeightedMean:
    """FedAvg's aggregation: the mean of the updates weighted by n_k (``samples``) or uniformly. With
    ``norm_guard`` (a multiple), updates beyond that multiple of the cohort's median norm are rejected first."""

    def __init__(self, weighting: str = "samples", norm_guard: float | None = None,
                 steps: Callable[[int, int], int] | None = None):
        self.weighting = weighting
        self.norm_guard = norm_guard
        self.steps = steps  # (round, num_samples) -> local steps: the guard compares norms per step

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        rejected: Sequence[Mapping[str, Any]] = []
        if self.norm_guard is not None and reports:
            reports, rejected = norm_guard(rnd, reports, self.norm_guard, self.steps)
        weights = [sample_weight(r, self.weighting) for r in reports]
        if not reports or not sum(weights) > 0:  # nothing accepted, or every weight 0: the model is kept
            return Aggregate(None, reports, {}, rejected)
        return Aggregate(weighted_mean([r.update for r in reports], weights), reports, {}, rejected)

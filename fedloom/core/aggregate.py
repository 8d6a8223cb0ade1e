"""Step 5's one protocol: an :class:`Aggregator` turns the round's validated client reports into one update.

Every server-side rule is an Aggregator: the weighted mean (:class:`WeightedMean`), the robust rules
(:mod:`fedloom.robust`), central DP (:mod:`fedloom.privacy`), the Paillier ciphertext sum
(:mod:`fedloom.crypto.secagg`), and algorithms' own rules (Fed2's feature-paired averaging, matched averaging,
HeteroFL's holder average, per-group means, FD's teachers). The loop calls ``aggregate`` once per round, also
with no reports (an aggregator may still report metrics, e.g. DP's epsilon).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from fedloom.core.types import Aggregate, ClientReport, Params, ServerState


class Aggregator(Protocol):
    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate: ...


def weighted_mean(updates: Sequence[Params], weights: Sequence[float]) -> Params:
    """sum_k w_k u_k / sum_k w_k, accumulated in place (no cohort-sized stack)."""
    total = float(sum(weights))
    acc = {k: torch.zeros_like(v) for k, v in updates[0].items()}
    for u, w in zip(updates, weights):
        for k, v in u.items():
            acc[k].add_(v, alpha=w / total)
    return acc


def sample_weight(report: ClientReport, weighting: str) -> float:
    """A client's weight in the mean: its sample count n_k (McMahan et al.'s n_k / n) or 1 (``uniform``)."""
    return float(report.num_samples) if weighting == "samples" else 1.0


class WeightedMean:
    """FedAvg's aggregation: the mean of the updates weighted by n_k (``samples``) or uniformly."""

    def __init__(self, weighting: str = "samples"):
        self.weighting = weighting

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports)
        return Aggregate(weighted_mean([r.update for r in reports], [sample_weight(r, self.weighting) for r in reports]),
                         reports)

"""Fed2 feature-paired averaging (Yu et al., "Fed2: Feature-Aligned Federated Learning", KDD'21,
arXiv 2111.14248; the 2020 version calls the network "Psi-Net", arXiv 2008.06767).

Fed2 has two parts. The structure part lives in :mod:`fedloom.models.grouped`: a grouped model whose group
g serves only the classes C_g, so group g encodes the same features on every client. This module is the
aggregation part. Clients run ordinary local SGD with plain cross-entropy and report their per-class sample
counts n_{k,c} in the message meta. The server then computes

* shared layers (FedAvg):            W_s <- sum_k (n_k / n) W_{s,k}
* group g (feature-paired averaging): W_g <- sum_k alpha_{k,g} W_{g,k},
  alpha_{k,g} = n_{k,g} / sum_j n_{j,g},  n_{k,g} = sum_{c in C_g} n_{k,c}

so group g is averaged only with group g, and clients that hold no data for C_g do not dilute it. If no
client in the cohort trained group g (every n_{k,g} = 0), W_g keeps its previous value: its aggregated update
is zero (with the default server optimizer ``sgd``; a momentum server optimizer would still move it).

The paper does not pin down the weighting (see ``shared/papers.md`` section 1, marked unverified). The
choices above are explicit options here:

* ``group_weighting='class_counts'`` is the alpha_{k,g} above. ``'fedavg'`` gives the groups the shared-layer
  weight, which amounts to "Fed2 structure + FedAvg averaging" (the IID scheme, and an ablation);
* ``weighting`` weights the shared layers, either ``samples`` (n_k / n) or ``uniform``;
* the decoupling depth, the groups, the class-to-group map and the input of the first grouped layer are
  parameters of the model (``grouped_mlp`` / ``grouped_cnn``).

Because the local work is plain local SGD, Fed2 runs on the vectorized engine.

Example (config)::

    model: {name: grouped_cnn, groups: 5, depth: 1}
    algorithm: {name: fed2, group_weighting: class_counts}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from fedloom.core.aggregate import sample_weight
from fedloom.core.algorithm import AlgorithmParams, LocalSGDAlgorithm, Traits
from fedloom.core.types import Aggregate, ClientReport, Params, ServerState
from fedloom.registry import ALGORITHMS

GroupLayout = dict[str, tuple[int, torch.Tensor]]


class Fed2Params(AlgorithmParams):
    group_weighting: str = Field(
        "class_counts", pattern="^(class_counts|fedavg)$",
        description="group g's client weights: 'class_counts' = n_{k,g} (samples of C_g; unverified reading of "
                    "the paper), 'fedavg' = the shared-layer weight (plain FedAvg)")


@dataclass(frozen=True)
class PairedWeight:
    """A client's aggregation weights: one for the shared layers, one per group."""

    shared: float
    groups: tuple[float, ...]


def group_counts(label_counts: list[int] | torch.Tensor, class_to_group: list[int], num_groups: int) -> list[float]:
    """n_{k,g} = sum over c in C_g of n_{k,c}."""
    out = [0.0] * num_groups
    for c, n in enumerate(torch.as_tensor(label_counts).tolist()):
        out[class_to_group[c]] += float(n)
    return out


def feature_paired_average(updates: list[Params], weights: list[PairedWeight], layout: GroupLayout) -> Params:
    """The aggregated update: weighted FedAvg mean for shared entries, per-group means for grouped ones.

    ``layout[name] = (dim, owner)`` says that index i of ``name`` along ``dim`` belongs to group ``owner[i]``.
    A group whose weights sum to 0 gets a zero update, so it keeps its previous value.
    """
    shared = torch.tensor([w.shared for w in weights], dtype=torch.float64)
    gw = torch.tensor([w.groups for w in weights], dtype=torch.float64)  # [K, G]
    if shared.sum() <= 0:
        raise ValueError("fed2: the shared-layer weights of the cohort sum to 0")
    a_shared = (shared / shared.sum()).tolist()
    tot = gw.sum(0)
    a_group = torch.where(tot > 0, gw / tot.clamp_min(1e-300), torch.zeros_like(gw))  # [K, G]; 0 = untrained
    out: Params = {}
    for name, ref in updates[0].items():
        acc = torch.zeros_like(ref)
        if name not in layout:
            for u, a in zip(updates, a_shared):
                acc.add_(u[name], alpha=a)
        else:
            dim, owner = layout[name]
            shape = [1] * ref.dim()
            shape[dim] = -1
            own = owner.to(ref.device)
            for k, u in enumerate(updates):
                coef = a_group[k].to(ref.device, ref.dtype)[own].view(shape)
                acc.add_(u[name] * coef)
        out[name] = acc
    return out


@ALGORITHMS.register("fed2", Fed2Params, "Fed2: feature-paired averaging of a grouped (Psi-Net) model")
class Fed2(LocalSGDAlgorithm):
    """Yu et al. 2021 (Fed2), feature-paired averaging. Needs a model with a ``group_layout`` (``grouped_mlp``,
    ``grouped_cnn``); clients report per-class counts in their message meta."""

    p: Fed2Params
    traits = Traits(plain_mean=False)
    contract_config = {"model": {"name": "grouped_mlp", "groups": 2, "hidden": [16, 16]}, "algorithm": "fed2"}

    def __init__(self, params: Fed2Params):
        super().__init__(params)
        self.layout: GroupLayout | None = None
        self.class_to_group: list[int] = []
        self.num_groups = 0

    def bind(self, ctx) -> None:
        model = ctx.model
        layout = getattr(model, "group_layout", None)
        if layout is None:
            raise ValueError(f"algorithm fed2 needs a grouped model (grouped_mlp, grouped_cnn); "
                             f"{type(model).__name__} has no group_layout")
        names = dict(model.named_parameters())
        for name, (dim, owner) in layout.items():
            if name not in names or names[name].shape[dim] != len(owner):
                raise ValueError(f"fed2: group layout entry {name!r} does not match the model's parameters")
        self.layout = {k: (d, o.clone()) for k, (d, o) in layout.items()}
        self.class_to_group = list(model.class_to_group)
        self.num_groups = int(model.num_groups)

    def client_meta(self, job: Any, k: int) -> dict[str, Any]:
        return {"label_counts": job.data.label_counts(k).tolist()}

    def check_report(self, report: ClientReport) -> None:
        counts = report.meta.get("label_counts")
        C = len(self.class_to_group)
        if (not isinstance(counts, list) or len(counts) != C
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts)):
            raise ValueError(f"meta 'label_counts' must be {C} non-negative integers, got {counts!r}")
        if sum(counts) != int(report.num_samples):
            raise ValueError(f"meta 'label_counts' sum to {sum(counts)}, num_samples is {report.num_samples}")

    def weight(self, report: ClientReport) -> PairedWeight:
        """A client's weights: n_k (or 1) for the shared layers, n_{k,g} (or the shared weight) per group."""
        shared = sample_weight(report, self.p.weighting)
        if self.p.group_weighting == "fedavg":
            groups = [shared] * self.num_groups
        else:
            groups = group_counts(report.meta["label_counts"], self.class_to_group, self.num_groups)
        return PairedWeight(shared, tuple(groups))

    def make_aggregator(self, ctx) -> FeaturePairedAverage:
        if self.layout is None:
            raise RuntimeError("fed2: bind(ctx) was not called")
        return FeaturePairedAverage(self)


class FeaturePairedAverage:
    """:func:`feature_paired_average` over the round's reports, with :meth:`Fed2.weight`."""

    def __init__(self, fed2: Fed2):
        self.fed2 = fed2

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports)
        assert self.fed2.layout is not None
        return Aggregate(feature_paired_average([r.update for r in reports], [self.fed2.weight(r) for r in reports],
                                                self.fed2.layout), reports)

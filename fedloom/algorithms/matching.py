"""Matched averaging: a permutation-matching baseline in the style of PFNM / FedMA.

Hidden units can be permuted without changing what a network computes. For two consecutive layers,
F(X) = W1 W0 X = (W1 P)(P^T W0) X for any permutation P (Fed2, eq. 1; Yurochkin et al. 2019, "Bayesian
Nonparametric Federated Learning of Neural Networks" (PFNM); Wang et al. 2020, "Federated Learning with
Matched Averaging" (FedMA)). Coordinate-wise averaging of two models whose units are permuted against each
other mixes unrelated features. Matched averaging first aligns the units and only then averages.

This module matches layer by layer, from the input upward:

1. for hidden layer l, client k's unit j is described by its incoming weights and bias (its columns are
   already in the aligned order, because layer l-1 has been matched). The cost of pairing global unit i with
   client unit j is ``||w_i - w^k_j||^2``;
2. the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) finds the permutation with the lowest
   total cost;
3. the permutation is applied to layer l's rows (and its per-channel norm parameters) and to the next
   layer's input columns. For a conv layer followed by Flatten, each channel owns a contiguous block of
   H*W columns of the first FC layer;
4. the aligned models are averaged with the usual client weights.

This is a hard, one-to-one matching onto a fixed-width model. The matching target is the current global model
(``iterations=1``). With ``iterations>1`` the clients are re-matched to the matched average (a FedMA-style
refinement). PFNM's Bayesian nonparametric model, which can grow the global width, is not implemented.

:func:`hidden_units` describes which parameter axes are indexed by hidden units. It works for ``nn.Sequential``
MLPs and CNNs (``mlp``, ``cnn``, ``logreg``). :mod:`fedloom.algorithms.heterofl` uses it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn

from fedloom.core.aggregate import sample_weight
from fedloom.core.algorithm import AlgorithmParams, LocalSGDAlgorithm, Traits
from fedloom.core.types import Aggregate, ClientReport, Params, ServerState
from fedloom.registry import ALGORITHMS

_PASS_THROUGH = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout,
                 nn.Identity)


@dataclass(frozen=True)
class UnitAxis:
    """Axis ``dim`` of a parameter is indexed by the units of hidden layer ``layer``. Each unit covers ``span``
    consecutive entries (H*W for a conv channel read through Flatten)."""

    layer: int
    dim: int
    span: int = 1


@dataclass(frozen=True)
class HiddenUnits:
    """The hidden-unit structure of a feed-forward model."""

    sizes: tuple[int, ...]                       # units per hidden layer (neurons or channels)
    axes: dict[str, tuple[UnitAxis, ...]]        # parameter name -> its unit-indexed axes

    def params_of(self, layer: int, dim: int | None = None) -> list[tuple[str, UnitAxis]]:
        return [(n, a) for n, ax in self.axes.items() for a in ax if a.layer == layer and (dim is None or a.dim == dim)]


def hidden_units(model: nn.Module) -> HiddenUnits:
    """Find which axes of ``model``'s parameters index hidden units.

    Supports ``nn.Sequential`` stacks of Linear / Conv2d / GroupNorm (1 group or one per channel) / Flatten and
    elementwise or pooling layers. Raises ``ValueError`` on anything else, since matching or masking
    through an unknown layer would silently change the function.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"hidden-unit matching supports nn.Sequential MLP/CNN models, not {type(model).__name__}")
    mods = list(model.named_children())
    param_pos = [i for i, (_, m) in enumerate(mods) if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not param_pos:
        raise ValueError("model has no Linear or Conv2d layer")
    sizes: list[int] = []
    axes: dict[str, list[UnitAxis]] = {}
    cur: int | None = None       # hidden layer whose units index the current activation's features/channels
    flat_from_conv = False       # the activation is a flattened conv map (each channel spans H*W features)
    for i, (name, m) in enumerate(mods):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise ValueError(f"layer {name!r}: grouped convolutions are not supported")
            in_dim = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            if cur is not None:
                span = 1
                if isinstance(m, nn.Linear) and flat_from_conv:
                    if in_dim % sizes[cur]:
                        raise ValueError(f"layer {name!r}: {in_dim} inputs do not split into {sizes[cur]} channels")
                    span = in_dim // sizes[cur]
                elif in_dim != sizes[cur]:
                    raise ValueError(f"layer {name!r}: expects {in_dim} inputs, previous layer has {sizes[cur]}")
                axes.setdefault(f"{name}.weight", []).append(UnitAxis(cur, 1, span))
            if i != param_pos[-1]:
                out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                cur = len(sizes)
                sizes.append(out)
                axes.setdefault(f"{name}.weight", []).insert(0, UnitAxis(cur, 0))
                if m.bias is not None:
                    axes[f"{name}.bias"] = [UnitAxis(cur, 0)]
                flat_from_conv = False
        elif isinstance(m, nn.GroupNorm):
            if m.num_groups not in (1, m.num_channels):
                raise ValueError(f"layer {name!r}: GroupNorm with {m.num_groups} groups is not permutation-"
                                 "equivariant (only 1 group or one group per channel is)")
            if cur is not None and m.affine:
                axes[f"{name}.weight"] = [UnitAxis(cur, 0)]
                axes[f"{name}.bias"] = [UnitAxis(cur, 0)]
        elif isinstance(m, nn.Flatten):
            flat_from_conv = cur is not None and any(isinstance(mm, nn.Conv2d) for _, mm in mods[:i])
        elif not isinstance(m, _PASS_THROUGH):
            raise ValueError(f"layer {name!r} ({type(m).__name__}) is not supported by hidden-unit matching")
    names = {n for n, _ in model.named_parameters()}
    unknown = set(axes) - names
    if unknown:
        raise ValueError(f"internal: unit axes for unknown parameters {sorted(unknown)}")
    return HiddenUnits(tuple(sizes), {k: tuple(v) for k, v in axes.items()})


def _unit_index(perm: torch.Tensor, span: int) -> torch.Tensor:
    return (perm.view(-1, 1) * span + torch.arange(span, device=perm.device)).reshape(-1)


def permute_units(params: Params, units: HiddenUnits, layer: int, perm: torch.Tensor) -> Params:
    """Reorder the units of hidden ``layer``: new unit i is old unit ``perm[i]`` (rows of the layer and its
    norm, input columns of the next layer). The function the network computes does not change."""
    out = dict(params)
    for name, ax in units.params_of(layer):
        t = out[name]
        out[name] = t.index_select(ax.dim, _unit_index(perm.to(t.device), ax.span))
    return out


def unit_features(params: Params, units: HiddenUnits, layer: int) -> torch.Tensor:
    """[units, features]: each unit's incoming weights, bias and norm parameters, flattened."""
    n = units.sizes[layer]
    return torch.cat([params[name].movedim(ax.dim, 0).reshape(n, -1) for name, ax in units.params_of(layer, dim=0)], 1)


def match_to(reference: Params, model: Params, units: HiddenUnits) -> tuple[Params, list[torch.Tensor]]:
    """Permute ``model``'s hidden units, layer by layer, onto ``reference`` (Hungarian matching on squared
    Euclidean distance of incoming weights). Returns the aligned model and the permutation of each layer."""
    from scipy.optimize import linear_sum_assignment  # scipy.optimize costs ~0.4 s to import: only when matching

    out = dict(model)
    perms = []
    for layer in range(len(units.sizes)):
        ref = unit_features(reference, units, layer).double().cpu()
        loc = unit_features(out, units, layer).double().cpu()
        cost = torch.cdist(ref, loc).pow(2).numpy()
        rows, cols = linear_sum_assignment(cost)
        perm = torch.as_tensor(cols, dtype=torch.int64)[torch.as_tensor(rows).argsort()]
        out = permute_units(out, units, layer, perm)
        perms.append(perm)
    return out, perms


def weighted_mean(models: list[Params], weights: list[float]) -> Params:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights sum to 0")
    return {k: sum(m[k] * (w / total) for m, w in zip(models, weights)) for k in models[0]}  # type: ignore[misc]


def matched_average(models: list[Params], weights: list[float], units: HiddenUnits,
                    reference: Params | None = None, iterations: int = 1) -> Params:
    """Align every model to ``reference`` (default: the first model), average; repeat against the average."""
    ref = reference if reference is not None else models[0]
    avg = ref
    for _ in range(iterations):
        avg = weighted_mean([match_to(ref, m, units)[0] for m in models], weights)
        ref = avg
    return avg


class MatchedAvgParams(AlgorithmParams):
    iterations: int = Field(1, ge=1, description="1 = match every client to the global model; more = re-match "
                                                 "to the matched average (FedMA-style refinement)")


@ALGORITHMS.register("matched_avg", MatchedAvgParams,
                     "PFNM/FedMA-style matched averaging: Hungarian-align hidden units to the global model, "
                     "then average")
class MatchedAvg(LocalSGDAlgorithm):
    """Local SGD as in FedAvg. The server aligns each client model's hidden units to the global model
    (layer-wise Hungarian matching) before the weighted average. MLP and CNN (``nn.Sequential``) models."""

    p: MatchedAvgParams
    traits = Traits(plain_mean=False)

    def __init__(self, params: MatchedAvgParams):
        super().__init__(params)
        self.units: HiddenUnits | None = None

    def bind(self, ctx) -> None:
        self.units = hidden_units(ctx.model)

    def make_aggregator(self, ctx) -> MatchedAverage:
        if self.units is None:
            raise RuntimeError("matched_avg: bind(ctx) was not called")
        return MatchedAverage(self.units, self.p.iterations, self.p.weighting)


class MatchedAverage:
    """Align every client model to the global one (Hungarian matching of hidden units), then average."""

    def __init__(self, units: HiddenUnits, iterations: int, weighting: str):
        self.units, self.iterations, self.weighting = units, iterations, weighting

    def aggregate(self, rnd: int, reports: Sequence[ClientReport], state: ServerState) -> Aggregate:
        if not reports:
            return Aggregate(None, reports)
        g = state.params
        models = [{k: g[k] + r.update[k] for k in r.update} for r in reports]
        avg = matched_average(models, [sample_weight(r, self.weighting) for r in reports], self.units, reference=g,
                              iterations=self.iterations)
        return Aggregate({k: avg[k] - g[k] for k in avg}, reports)

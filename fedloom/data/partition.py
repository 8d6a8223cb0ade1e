"""Partitioners: split a labelled training set into client shards.

Each partitioner validates its parameters (pydantic) and draws from its own seeded generator, so the same
(labels, num_clients, params, seed) always gives the same partition. All return a list of int64 index arrays,
one per client, pairwise disjoint.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedloom.registry import PARTITIONERS


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check(num_clients: int, n: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"data.num_clients={num_clients} exceeds the {n} training samples (one client needs at "
                         "least one)")


class IIDParams(_Params):
    samples_per_client: int | None = Field(None, ge=1, description="give every client exactly this many samples "
                                           "(a random subset of the training set); default: split all of it")


@PARTITIONERS.register("iid", IIDParams, "uniformly random, near-equal shards")
def iid(labels: np.ndarray, num_clients: int, p: IIDParams, rng: np.random.Generator) -> list[np.ndarray]:
    _check(num_clients, len(labels))
    perm = rng.permutation(len(labels))
    if p.samples_per_client is not None:
        need = num_clients * p.samples_per_client
        if need > len(labels):
            raise ValueError(f"samples_per_client={p.samples_per_client} x num_clients={num_clients} = {need} "
                             f"exceeds the {len(labels)} training samples")
        perm = perm[:need]
    return [np.sort(a).astype(np.int64) for a in np.array_split(perm, num_clients)]


class DirichletParams(_Params):
    alpha: float = Field(0.5, gt=0, description="concentration; small alpha = strong label skew")
    min_size: int = Field(1, ge=0, description="resample until every client holds at least this many samples")
    max_tries: int = Field(100, ge=1)


@PARTITIONERS.register("dirichlet", DirichletParams, "label skew: class c split over clients by Dir(alpha)")
def dirichlet(labels: np.ndarray, num_clients: int, p: DirichletParams, rng: np.random.Generator) -> list[np.ndarray]:
    """Hsu et al. 2019: for each class, proportions over clients ~ Dirichlet(alpha * 1)."""
    _check(num_clients, len(labels))
    classes = np.unique(labels)
    for _ in range(p.max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_clients, p.alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(ps)).astype(np.int64) for ps in parts]
        if min(len(o) for o in out) >= p.min_size:
            return out
    raise ValueError(
        f"dirichlet partition: no draw in {p.max_tries} tries gave every client >= {p.min_size} samples "
        f"(alpha={p.alpha}, num_clients={num_clients}); lower min_size or raise alpha"
    )


class ShardParams(_Params):
    shards_per_client: int = Field(2, ge=1, description="McMahan et al.'s pathological non-IID: k label-sorted shards")


@PARTITIONERS.register("shards", ShardParams, "pathological non-IID: each client gets k label-sorted shards")
def shards(labels: np.ndarray, num_clients: int, p: ShardParams, rng: np.random.Generator) -> list[np.ndarray]:
    n_shards = num_clients * p.shards_per_client
    _check(num_clients, len(labels))
    if n_shards > len(labels):
        raise ValueError(f"data.partition.shards_per_client={p.shards_per_client} x data.num_clients={num_clients} = "
                         f"{n_shards} shards exceeds the {len(labels)} training samples (a shard holds at least one)")
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_shards)
    assign = rng.permutation(n_shards).reshape(num_clients, p.shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])).astype(np.int64) for row in assign]


class QuantityParams(_Params):
    sigma: float = Field(1.0, gt=0, description="client sizes proportional to lognormal(0, sigma)")
    min_size: int = Field(1, ge=1)


@PARTITIONERS.register("quantity_skew", QuantityParams, "iid content, lognormal client sizes")
def quantity_skew(labels: np.ndarray, num_clients: int, p: QuantityParams, rng: np.random.Generator) -> list[np.ndarray]:
    n = len(labels)
    _check(num_clients * p.min_size, n)
    w = rng.lognormal(0.0, p.sigma, num_clients)
    extra = n - num_clients * p.min_size
    sizes = p.min_size + np.floor(w / w.sum() * extra).astype(int)
    sizes[np.argsort(-w)[: n - sizes.sum()]] += 1  # hand out the rounding remainder: covers all samples
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(a).astype(np.int64) for a in np.split(rng.permutation(n), cuts)]


@PARTITIONERS.register("natural", _Params, "the dataset's own per-client split (e.g. synthetic clients, speakers)")
def natural(labels: np.ndarray, num_clients: int, p: _Params, rng: np.random.Generator, natural=None) -> list[np.ndarray]:
    if natural is None:
        raise ValueError("partition 'natural' needs a dataset with a natural per-client split (e.g. synthetic)")
    if num_clients > len(natural):
        raise ValueError(f"num_clients={num_clients} exceeds the dataset's {len(natural)} natural clients")
    return [np.asarray(a, dtype=np.int64) for a in natural[:num_clients]]


def partition(labels, num_clients: int, name: str = "iid", params: dict | None = None, seed: int = 0, natural=None):
    """Partition ``labels`` into ``num_clients`` index arrays with the named partitioner."""
    from fedloom.rng import numpy_rng

    entry = PARTITIONERS.entry(name)
    p = entry.params(**(params or {}))
    labels = np.asarray(labels)
    rng = numpy_rng(seed, "partition", name)
    if name == "natural":
        return entry.factory(labels, num_clients, p, rng, natural=natural)
    return entry.factory(labels, num_clients, p, rng)

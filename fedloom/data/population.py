"""Lazy generated populations: LEAF's Synthetic(alpha, beta) with client k generated from (seed, k) only.

``synthetic_population`` is the cross-device counterpart of the eager ``synthetic`` dataset: the population
size is ``data.num_clients`` (10^6 is fine), and building it draws only the clients' sample counts (one
int64 array). Client k's model and samples are drawn from a generator seeded by (seed, k) when the client
is sampled -- so a client is the same object whatever the population size, the cohort or the engine::

    data: {dataset: {name: synthetic_population, alpha: 1, beta: 1}, partition: natural, num_clients: 1000000}

Client k (Li et al., FedProx 2020; LEAF): u_k ~ N(0, alpha), W_k ~ N(u_k, 1) [dim x classes], b_k ~ N(u_k, 1);
B_k ~ N(0, beta), v_k ~ N(B_k, 1) [dim]; x ~ N(v_k, diag(j^-1.2)); y = argmax(W_k^T x + b_k). With ``iid`` one
global (W, b) and v = 0. Sample counts are lognormal(4, 2) + 50 (capped at ``max_size``), drawn for the whole
population from one stream, so a population of N clients is a prefix of a larger one. A client's first
``test_fraction`` of its samples is held out (LEAF's per-user split); the server's test set is the held-out
samples of ``eval_clients`` clients drawn uniformly (seeded) from the population.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.data.base import DataError, DatasetInfo, SizedByArray, int64_sizes
from fedloom.registry import DATASETS
from fedloom.rng import numpy_rng


class PopulationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.0, ge=0, description="spread of client models (LEAF Synthetic(alpha, beta))")
    beta: float = Field(1.0, ge=0, description="spread of client input distributions")
    dim: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)
    iid: bool = Field(False, description="one shared model and input distribution (LEAF's Synthetic IID)")
    seed: int = Field(0, description="generator seed (fixed so that the population is a stable object)")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="per-client held-out fraction")
    max_size: int = Field(2000, ge=50, description="cap on a client's sample count (before the held-out split)")
    eval_clients: int = Field(100, ge=1, description="clients whose held-out samples form the server's test set")


class SyntheticPopulation(SizedByArray):
    """``num_clients`` Synthetic(alpha, beta) clients, each generated on demand (see the module docstring).
    ``generated`` counts training-data generations per client (what a run actually touched)."""

    _counts: np.ndarray | None = None  # generations per client (int32, allocated at the first one)

    def __init__(self, p: PopulationParams, num_clients: int):
        if num_clients < 1:
            raise DataError(f"data.num_clients: must be >= 1, got {num_clients}")
        self.p, self.n = p, int(num_clients)
        rng = numpy_rng(p.seed, "synthetic-population", "sizes")
        total = (rng.lognormal(4, 2, self.n).astype(np.int64) + 50).clip(max=p.max_size)
        self.n_test = np.maximum(1, np.rint(total * p.test_fraction)).astype(np.int64)
        self.sizes = total - self.n_test  # training samples per client
        self._sizes_t = int64_sizes(self.sizes)
        d = p.dim
        self._sd = (np.arange(1, d + 1, dtype=np.float64) ** -0.6).astype(np.float32)  # sqrt of diag(j^-1.2)
        if p.iid:
            g = numpy_rng(p.seed, "synthetic-population", "global")
            self._global = (g.normal(0, 1, (d, p.num_classes)), g.normal(0, 1, p.num_classes))
        self.source = DatasetInfo("synthetic_population", (d,), p.num_classes, self._test_set,
                                  {"generated": True, "lazy": True, "population": self.n})

    def generate(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """All of client k's samples (held-out ones first), from (seed, k) alone."""
        p, d, c = self.p, self.p.dim, self.p.num_classes
        rng = numpy_rng(p.seed, "synthetic-population", "client", k)
        if p.iid:
            W, b = self._global
            v = np.zeros(d)
        else:
            u = rng.normal(0, p.alpha)
            W, b = rng.normal(u, 1, (d, c)), rng.normal(u, 1, c)
            v = rng.normal(rng.normal(0, p.beta), 1, d)
        n = int(self.sizes[k] + self.n_test[k])
        x = rng.standard_normal((n, d), dtype=np.float32)
        x *= self._sd
        x += v.astype(np.float32)
        y = np.argmax(x @ W.astype(np.float32) + b.astype(np.float32), axis=1).astype(np.int64)
        return x, y

    @property
    def generated(self) -> dict[int, int]:
        """{client: how often its training data was generated} for every client generated so far."""
        if self._counts is None:
            return {}
        return {int(k): int(self._counts[k]) for k in np.flatnonzero(self._counts)}

    def _client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._counts is None:
            self._counts = np.zeros(self.n, dtype=np.int32)
        self._counts[k] += 1
        x, y = self.generate(k)
        t = int(self.n_test[k])
        return torch.from_numpy(x[t:]), torch.from_numpy(y[t:])

    def _test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, ids = self.test_split()
        self.source.info["eval_clients"] = len(ids)
        return x, y

    def test_split(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The server's test set: held-out samples of ``eval_clients`` seeded-uniform clients."""
        m = min(self.p.eval_clients, self.n)
        ids = sorted(numpy_rng(self.p.seed, "synthetic-population", "eval").choice(self.n, m, replace=False).tolist())
        xs, ys = [], []
        for k in ids:
            x, y = self.generate(k)
            t = int(self.n_test[k])
            xs.append(x[:t])
            ys.append(y[:t])
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), ids

class PopulationSpec:
    """What the registry factory returns: the population is sized by ``data.num_clients`` at build time."""

    def __init__(self, p: PopulationParams):
        self.p = p

    def federate(self, num_clients: int, partitioner: str, partition_params: dict | None, seed: int
                 ) -> SyntheticPopulation:
        if partitioner != "natural":
            raise DataError(f"data.partition: synthetic_population generates each client from (seed, k); its clients "
                            f"are its own, so use partition 'natural' (got {partitioner!r})")
        return SyntheticPopulation(self.p, num_clients)


@DATASETS.register("synthetic_population", PopulationParams,
                   "LEAF Synthetic(alpha, beta), lazy: client k generated from (seed, k) when sampled; "
                   "population size = data.num_clients (partition natural)")
def load_population(p: PopulationParams) -> PopulationSpec:
    return PopulationSpec(p)

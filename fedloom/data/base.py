"""The federated dataset interface: what the round loop, the engines and the planner may ask of client data.

A :class:`FederatedDataset` answers cheaply how many clients there are and how many samples each holds (one
int64 array), and hands out one client's ``(x, y)`` -- or a whole cohort's, as one :class:`Cohort` -- only when
asked. Nothing in a run touches an unsampled client, so a population may be far larger than memory:

* :class:`fedloom.data.federated.FederatedData` -- today's in-memory form: one tensor store, per-client index
  sets (a cohort read is a view, no copy);
* :class:`fedloom.data.store.StoreDataset` -- an on-disk Arrow client store, memory-mapped; a cohort read
  costs its own rows only;
* :class:`fedloom.data.population.SyntheticPopulation` -- LEAF's Synthetic(alpha, beta) generated per client
  from (seed, k) when the client is sampled.

``source`` carries what the server and the model builder read: ``name``, ``num_classes``, ``input_shape``,
``test_x``/``test_y`` (the server's evaluation split) and ``info``. In-memory data also has
``source.train_x``/``train_y``; lazy data has ``train_x = None``.

A dataset that is federated by nature (a store, a generated population) is registered in
:data:`fedloom.registry.DATASETS` with a factory returning a :class:`NativeFederated`; ``build_federated``
then asks it for ``num_clients`` clients instead of partitioning a centralized training set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from fedloom.data.datasets import DataError, DataUnavailable

__all__ = ["Cohort", "DataError", "DataUnavailable", "DatasetInfo", "FederatedDataset", "NativeFederated"]


class DatasetInfo:
    """``source`` of a lazy federated dataset: everything but a centralized training split (``train_x`` and
    ``train_y`` are None: read clients through the FederatedDataset). The test split is ``test`` itself or, if
    ``test`` is a callable, what it returns on first use (a store reads it, a population generates it)."""

    train_x: Any = None
    train_y: Any = None

    def __init__(self, name: str, input_shape: tuple[int, ...], num_classes: int,
                 test: tuple[torch.Tensor, torch.Tensor] | Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 info: dict | None = None):
        self.name, self.input_shape, self.num_classes = name, tuple(input_shape), int(num_classes)
        self.info: dict = dict(info or {})
        self._test = test

    def _split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if callable(self._test):
            self._test = self._test()
        return self._test

    @property
    def test_x(self) -> torch.Tensor:
        return self._split()[0]

    @property
    def test_y(self) -> torch.Tensor:
        return self._split()[1]


@dataclass
class Cohort:
    """Training rows of some clients: client i of the request owns rows ``rows[i]`` of ``x``/``y``, in its own
    sample order. For in-memory data ``x``/``y`` are the whole training set (a view, no copy); for lazy data they
    hold exactly the requested clients' rows."""

    x: torch.Tensor
    y: torch.Tensor
    rows: list[torch.Tensor]


class FederatedDataset:
    """Client-partitioned training data plus a server-side test split (see the module docstring).

    Subclasses implement :attr:`num_clients`, :attr:`client_sizes` and :meth:`_client_data`; the rest has
    defaults built on those. Per-client methods take a client id ``0 <= k < num_clients``.
    """

    source: Any

    # -- cheap, whole-population facts ------------------------------------------------------------------
    @property
    def num_clients(self) -> int:
        raise NotImplementedError

    @property
    def client_sizes(self) -> torch.Tensor:
        """Every client's number of training samples (int64, one entry per client)."""
        raise NotImplementedError

    def client_size(self, k: int) -> int:
        return int(self.client_sizes[k])

    # -- one client, or a cohort, on demand -------------------------------------------------------------
    def _client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client k's training inputs and targets (after any label flipping, see :meth:`flip_labels`)."""
        self._check(k)
        x, y = self._client_data(k)
        if k in self._flipped:
            y = self.source.num_classes - 1 - y
        return x, y

    def label_counts(self, k: int) -> torch.Tensor:
        """Client k's number of samples per class (int64 [num_classes])."""
        return torch.bincount(self.client_data(k)[1].reshape(-1).cpu(), minlength=self.source.num_classes)

    def cohort(self, clients: Sequence[int]) -> Cohort:
        """The training rows of ``clients``, gathered once (the engines index this, never the population)."""
        xs, ys, rows = [], [], []
        off = 0
        for k in clients:
            x, y = self.client_data(k)
            xs.append(x)
            ys.append(y)
            rows.append(torch.arange(off, off + len(y), dtype=torch.int64))
            off += len(y)
        if not xs:
            return Cohort(torch.empty(0), torch.empty(0, dtype=torch.int64), [])
        return Cohort(torch.cat(xs), torch.cat(ys), rows)

    # -- changes a run makes -------------------------------------------------------------------------------
    @property
    def _flipped(self) -> frozenset[int]:
        return getattr(self, "_flipped_clients", frozenset())

    def flip_labels(self, clients: Iterable[int]) -> None:
        """Simulated label flipping (``attack: label_flip``): these clients' labels read as C - 1 - y."""
        self._flipped_clients = self._flipped | frozenset(int(k) for k in clients)

    def _check(self, k: int) -> None:
        if not 0 <= k < self.num_clients:
            raise IndexError(f"client {k} out of range: the dataset has {self.num_clients} clients")


class SizedByArray(FederatedDataset):
    """A dataset whose client sizes are one numpy array ``self.sizes`` (with its int64 tensor ``self._sizes_t``)
    over ``self.n`` clients: the lazy kinds (a store, a generated population)."""

    n: int
    sizes: np.ndarray
    _sizes_t: torch.Tensor

    @property
    def num_clients(self) -> int:
        return self.n

    @property
    def client_sizes(self) -> torch.Tensor:
        return self._sizes_t

    def client_size(self, k: int) -> int:
        return int(self.sizes[k])


@runtime_checkable
class NativeFederated(Protocol):
    """What a natively federated dataset's registry factory returns: ``federate`` gives the run's clients
    (``partition: natural`` takes the first ``num_clients``; a store also accepts other partitioners, applied to
    its pooled rows)."""

    def federate(self, num_clients: int, partitioner: str, partition_params: dict | None, seed: int
                 ) -> FederatedDataset: ...


def int64_sizes(sizes: np.ndarray | Sequence[int]) -> torch.Tensor:
    """``sizes`` as the int64 tensor :attr:`FederatedDataset.client_sizes` returns (shares memory when it can)."""
    return torch.from_numpy(np.ascontiguousarray(sizes, dtype=np.int64))

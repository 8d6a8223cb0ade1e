"""The federated view of a dataset: one tensor store, per-client index sets (the in-memory
:class:`~fedloom.data.base.FederatedDataset`), and :func:`build_federated`, which builds a run's clients."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedloom.data.base import Cohort, DataError, FederatedDataset, NativeFederated
from fedloom.data.datasets import DataSource, load_dataset
from fedloom.data.partition import partition


@dataclass
class FederatedData(FederatedDataset):
    """Training data kept once; client k owns rows ``client_indices[k]`` of ``train_x``/``train_y``."""

    source: DataSource
    client_indices: list[torch.Tensor]

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    @property
    def client_sizes(self) -> torch.Tensor:
        return torch.tensor([len(i) for i in self.client_indices], dtype=torch.int64)

    def client_size(self, k: int) -> int:
        return len(self.client_indices[k])

    def _client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.client_indices[k]
        return self.source.train_x[idx], self.source.train_y[idx]

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._client_data(k)  # label flipping rewrites train_y itself (flip_labels)

    def label_counts(self, k: int) -> torch.Tensor:
        return torch.bincount(self.source.train_y[self.client_indices[k]], minlength=self.source.num_classes)

    def cohort(self, clients: Sequence[int]) -> Cohort:
        """A view: the whole training set with each client's global row indices (no copy)."""
        return Cohort(self.source.train_x, self.source.train_y, [self.client_indices[k] for k in clients])

    def flip_labels(self, clients: Iterable[int]) -> None:
        """Rewrite these clients' training labels y -> C - 1 - y (on a private copy of the label tensor)."""
        ks = sorted(int(k) for k in clients)
        if not ks:
            return
        y = self.source.train_y.clone()
        idx = torch.cat([self.client_indices[k] for k in ks])
        y[idx] = self.source.num_classes - 1 - y[idx]
        self.source.train_y = y


def build_federated(dataset: str, dataset_params: dict | None, num_clients: int, partitioner: str,
                    partition_params: dict | None, seed: int) -> FederatedDataset:
    """The run's federated data: a centralized dataset split by a partitioner, or a natively federated one (a
    client store, a generated population) asked for its first ``num_clients`` clients."""
    src = load_dataset(dataset, dataset_params)
    if isinstance(src, NativeFederated):
        return src.federate(num_clients, partitioner, partition_params, seed)
    if not isinstance(src, DataSource):
        raise DataError(f"data.dataset: {dataset!r} built a {type(src).__name__}, not a dataset")
    try:
        parts = partition(src.train_y.numpy(), num_clients, partitioner, partition_params, seed,
                          natural=src.natural_partition)
    except ValueError as e:  # the data settings do not fit this dataset: a config error, named
        raise DataError(f"{e} (dataset {dataset!r}, partition {partitioner!r})") from None
    return FederatedData(src, [torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in parts])

"""The federated view of a dataset: one tensor store, per-client index sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedloom.data.datasets import DataSource, load_dataset
from fedloom.data.partition import partition


@dataclass
class FederatedData:
    """Training data kept once; client k owns rows ``client_indices[k]`` of ``train_x``/``train_y``."""

    source: DataSource
    client_indices: list[torch.Tensor]

    @property
    def num_clients(self) -> int:
        return len(self.client_indices)

    @property
    def client_sizes(self) -> torch.Tensor:
        return torch.tensor([len(i) for i in self.client_indices], dtype=torch.int64)

    def client_data(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.client_indices[k]
        return self.source.train_x[idx], self.source.train_y[idx]

    def label_counts(self, k: int) -> torch.Tensor:
        return torch.bincount(self.source.train_y[self.client_indices[k]], minlength=self.source.num_classes)


def build_federated(dataset: str, dataset_params: dict | None, num_clients: int, partitioner: str,
                    partition_params: dict | None, seed: int) -> FederatedData:
    src = load_dataset(dataset, dataset_params)
    parts = partition(src.train_y.numpy(), num_clients, partitioner, partition_params, seed, natural=src.natural_partition)
    return FederatedData(src, [torch.from_numpy(np.asarray(p, dtype=np.int64)) for p in parts])

"""Offline datasets, partitioners, the federated dataset interface and its implementations (in memory, an
on-disk client store, lazy generated populations)."""

from fedloom.data.base import Cohort, DataError, DatasetInfo, FederatedDataset, NativeFederated
from fedloom.data.datasets import DataSource, DataUnavailable, load_dataset
from fedloom.data.federated import FederatedData, build_federated
from fedloom.data.partition import partition

__all__ = ["Cohort", "DataError", "DataSource", "DataUnavailable", "DatasetInfo", "FederatedData", "FederatedDataset",
           "NativeFederated", "build_federated", "load_dataset", "partition"]

from fedloom.data import population, store, text  # noqa: E402,F401  (registration: synthetic_population, store, shakespeare)

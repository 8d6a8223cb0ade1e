"""Offline datasets, partitioners, and the federated view of a dataset."""

from fedloom.data.datasets import DataSource, DataUnavailable, load_dataset
from fedloom.data.federated import FederatedData, build_federated
from fedloom.data.partition import partition

__all__ = ["DataSource", "DataUnavailable", "FederatedData", "build_federated", "load_dataset", "partition"]

from fedloom.data import text  # noqa: E402,F401  (registration: shakespeare, shakespeare_genre)

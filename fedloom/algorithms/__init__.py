"""Algorithms: one file each, each only its math (see :mod:`fedloom.algorithms.base`)."""

from fedloom.algorithms import fedavg, server_opt  # noqa: F401  (registration)
from fedloom.algorithms import fed2, heterofl, local_family, matching, scaffold  # noqa: F401  (registration)
from fedloom.algorithms.base import Algorithm, ClientOutput, LocalSchedule, client_batches
from fedloom.registry import ALGORITHMS


def build_algorithm(name: str, params: dict | None) -> Algorithm:
    e = ALGORITHMS.entry(name)
    return e.factory(e.params(**(params or {})))


__all__ = ["Algorithm", "ClientOutput", "LocalSchedule", "build_algorithm", "client_batches"]

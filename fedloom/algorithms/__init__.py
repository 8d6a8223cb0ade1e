"""Algorithms: one file each, each only its math (interfaces in :mod:`fedloom.core.algorithm`)."""

from fedloom.algorithms import fd, fed2, fedavg, fednova, fedrl, heterofl, local_family, matching, scaffold, server_opt  # noqa: F401  (registration)  # noqa: F401  (registration)  # noqa: F401  (registration: fd, fedppo, fedtrpo)
from fedloom.core.algorithm import Algorithm
from fedloom.registry import ALGORITHMS


def build_algorithm(name: str, params: dict | None) -> Algorithm:
    e = ALGORITHMS.entry(name)
    return e.factory(e.params(**(params or {})))


__all__ = ["Algorithm", "build_algorithm"]

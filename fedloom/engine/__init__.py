"""Execution engines: ``sequential`` (reference), ``vectorized`` (vmap over the cohort) and ``distributed``
(the cohort sharded over torch.distributed ranks)."""

from fedloom.engine.base import CohortJob, Engine
from fedloom.engine.distributed import DistributedEngine  # noqa: E402  (registers "distributed")
from fedloom.engine.sequential import SequentialEngine
from fedloom.engine.vectorized import VectorizedEngine, fallback_reason
from fedloom.registry import ENGINES


def build_engine(name: str, params: dict | None) -> Engine:
    e = ENGINES.entry(name)
    return e.factory(e.params(**(params or {})))


__all__ = ["CohortJob", "DistributedEngine", "Engine", "SequentialEngine", "VectorizedEngine", "build_engine", "fallback_reason"]

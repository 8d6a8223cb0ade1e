"""Execution engines: ``sequential`` (reference) and ``vectorized`` (vmap over the cohort)."""

from fedloom.engine.base import CohortTask, Engine
from fedloom.engine.sequential import SequentialEngine
from fedloom.engine.vectorized import VectorizedEngine, fallback_reason
from fedloom.registry import ENGINES


def build_engine(name: str, params: dict | None) -> Engine:
    e = ENGINES.entry(name)
    return e.factory(e.params(**(params or {})))


__all__ = ["CohortTask", "Engine", "SequentialEngine", "VectorizedEngine", "build_engine", "fallback_reason"]

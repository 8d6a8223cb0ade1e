"""Named registries of components (algorithms, datasets, partitioners, models, engines).

Each entry pairs a factory with an optional pydantic ``Params`` model, so a config such as
``algorithm: {name: fedprox, mu: 0.01}`` is validated by the component's own typed parameters and a
bad value is reported with its full dotted path (``algorithm.mu``). There is no central string switch:
components register themselves where they are defined.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class NoParams(BaseModel):
    """Parameters of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    params: type[BaseModel]
    summary: str


class Registry(Generic[T]):
    """A name -> (factory, params model) table for one kind of component."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, params: type[BaseModel] | None = None, summary: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or ((getattr(obj, "__doc__", None) or "").strip().splitlines() or [""])[0]
            self._entries[name] = Entry(name, obj, params or NoParams, doc)
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}") from None

    def get(self, name: str) -> T:
        return self.entry(name).factory

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]


ALGORITHMS: Registry[Any] = Registry("algorithm")
DATASETS: Registry[Any] = Registry("dataset")
PARTITIONERS: Registry[Any] = Registry("partitioner")
MODELS: Registry[Any] = Registry("model")
ENGINES: Registry[Any] = Registry("engine")
SERVER_OPTIMIZERS: Registry[Any] = Registry("server optimizer")
LR_SCHEDULES: Registry[Any] = Registry("learning-rate schedule")
TASKS: Registry[Any] = Registry("task")  # the loss and metrics of a model (fedloom.models.tasks)
# Federated "datasets" that are not labelled data (RL environment families, fedloom.rl): the factory takes
# (params, num_clients, seed) and returns the object the run uses as ``sim.data`` (num_clients, client_sizes,
# source.input_shape, source.num_classes). ``data.dataset.name`` is looked up here first, then in DATASETS.
ENVIRONMENTS: Registry[Any] = Registry("environment")

"""Data-parallel local SGD on torch.distributed and scale-out simulation.

* :mod:`fedloom.distributed.local_sgd` -- mini-batch, local (Stich 2019), post-local and hierarchical local
  SGD (Lin et al. 2020) across torch.distributed ranks, with communication accounting
  (:mod:`fedloom.distributed.comm`) and an optional simulated slow link.
* :mod:`fedloom.distributed.reference` -- the same algorithms with K workers in one process (tests, benchmarks).
* :mod:`fedloom.distributed.launch` -- ``torchrun`` entry point and an in-process spawner for tests.
* :mod:`fedloom.engine.distributed` -- the ``distributed`` simulation engine (cohort sharded over ranks).
"""

from fedloom.distributed.comm import Comm, CommStats
from fedloom.distributed.local_sgd import LocalSGDConfig, sync_kind, train

__all__ = ["Comm", "CommStats", "LocalSGDConfig", "sync_kind", "train"]

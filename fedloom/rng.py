"""Explicit, derivable randomness.

Every stochastic part of a run gets its own generator derived from the run seed and a tuple of keys
(a tag string, the round, the client id...), so results do not depend on call order, on the engine, or
on how a cohort is sharded across processes.
"""

from __future__ import annotations

import zlib
from typing import SupportsInt, cast

import numpy as np
import torch


def _key_ints(keys: tuple[object, ...]) -> list[int]:
    out = []
    for k in keys:
        if isinstance(k, str):
            out.append(zlib.crc32(k.encode()))
        else:
            out.append(int(cast(SupportsInt, k)) & 0xFFFFFFFF)
    return out


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys`` (via numpy's SeedSequence)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *_key_ints(keys)])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1, 1 << 31], dtype=np.uint64)) & (
        (1 << 63) - 1
    )


def torch_generator(seed: int, *keys: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g


def numpy_rng(seed: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *keys))

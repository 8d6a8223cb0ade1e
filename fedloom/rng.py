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


def randperm_prefix(n: int, m: int, seed: int, *keys: object) -> list[int]:
    """``torch.randperm(n, generator=torch_generator(seed, *keys))[:m].tolist()`` in O(m) time and memory.

    PyTorch's CPU ``randperm`` (n < 2^32 / 20) is a forward Fisher-Yates shuffle: step i swaps position i with
    i + r_i mod (n - i), r_i the generator's i-th 32-bit Mersenne Twister output, so the first m positions depend
    on r_0..r_{m-1} only. Those are drawn from the same MT19937 stream (NumPy's frozen ``RandomState``, seeded
    as torch's ``manual_seed`` seeds it: the seed's low 32 bits) and the swaps are replayed on a sparse map.
    A cohort of m from a population of n thus costs O(m), not O(n), with bit-identical results: checked once
    per process against ``torch.randperm`` (falling back to it if a PyTorch release changed the algorithm).
    """
    n, m = int(n), max(0, min(int(m), int(n)))
    if n >= (1 << 32) // 20 or n < 64 * m or not _randperm_replay_ok():  # randperm is faster or different
        return torch.randperm(n, generator=torch_generator(seed, *keys))[:m].tolist()
    return _replay(n, m, derive_seed(seed, *keys))


def _replay(n: int, m: int, seed63: int) -> list[int]:
    draws = np.random.RandomState(seed63 & 0xFFFFFFFF).randint(0, 1 << 32, size=min(m, n - 1), dtype=np.uint32)
    j = (np.arange(len(draws), dtype=np.int64) + draws.astype(np.int64) % (n - np.arange(len(draws), dtype=np.int64))
         ).tolist()
    moved: dict[int, int] = {}  # position -> value, for positions a swap has touched
    out = []
    for i in range(m):
        ji = j[i] if i < len(j) else i
        vi, vj = moved.get(i, i), moved.get(ji, ji)
        moved[ji] = vi
        out.append(vj)
    return out


_REPLAY_OK: bool | None = None


def _randperm_replay_ok() -> bool:
    global _REPLAY_OK
    if _REPLAY_OK is None:
        cases = ((1000, 1000, 7), (5000, 40, 11), (3, 3, 5))
        _REPLAY_OK = all(_replay(n, m, derive_seed(s, "randperm-check")) == torch.randperm(
            n, generator=torch_generator(s, "randperm-check"))[:m].tolist() for n, m, s in cases)
    return _REPLAY_OK

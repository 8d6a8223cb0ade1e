"""Multi-core Paillier encryption with worker processes.

gmpy2 holds the GIL, so encryption parallelizes with processes, not threads. :class:`ParallelEncryptor` keeps a
pool of ``workers`` processes (``spawn`` start method by default: safe when torch is loaded in the parent),
each of which builds its own randomness strategy once from a picklable :class:`RandomnessSpec`; plaintexts go
out in chunks, fixed-size serialized ciphertexts come back. ``workers=1`` encrypts in the calling process.

    >>> with ParallelEncryptor(pk, "fresh", workers=2) as enc:   # doctest: +SKIP
    ...     cts = enc.encrypt(plaintexts)
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from itertools import pairwise

from gmpy2 import mpz

from fedloom.crypto.paillier import PrivateKey, PublicKey
from fedloom.crypto.randomness import Randomness, RandomnessSpec, build_randomness, encrypt_many

# Per worker process: the key and strategy set once by the pool initializer (never used in the parent).
_worker: tuple[PublicKey, Randomness] | None = None


def _init_worker(n: int, spec: RandomnessSpec) -> None:
    global _worker
    pk = PublicKey(mpz(n))
    _worker = (pk, build_randomness(pk, spec))


def _encrypt_chunk(plaintexts: list[int]) -> bytes:
    assert _worker is not None, "worker not initialized"
    pk, rnd = _worker
    return pk.serialize(encrypt_many(pk, plaintexts, rnd))


def _obfuscator_chunk(count: int) -> bytes:
    assert _worker is not None, "worker not initialized"
    pk, rnd = _worker
    return pk.serialize(rnd.obfuscators(count))


_decryptor: PrivateKey | None = None


def _init_decryptor(p: int, q: int) -> None:
    global _decryptor
    _decryptor = PrivateKey.from_primes(p, q)


def _decrypt_chunk(blob: bytes) -> list[int]:
    assert _decryptor is not None, "worker not initialized"
    sk = _decryptor
    return [int(m) for m in sk.decrypt_many(sk.public_key.deserialize(blob, validate=False), validate=False)]


def decrypt_parallel(private_key: PrivateKey, ciphertexts: Sequence[int], workers: int, *,
                     start_method: str = "spawn") -> list[mpz]:
    """CRT-decrypt ``ciphertexts`` (already validated) on ``workers`` processes of the key holder: the
    factors are pickled to them, so run this only inside the key authority's own trust domain."""
    pk = private_key.public_key
    if workers <= 1 or len(ciphertexts) < 2 * workers:
        return private_key.decrypt_many(ciphertexts, validate=False)
    k = len(ciphertexts)
    bounds = [k * i // workers for i in range(workers + 1)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context(start_method), initializer=_init_decryptor,
                             initargs=(int(private_key.p), int(private_key.q))) as ex:
        parts = list(ex.map(_decrypt_chunk, [pk.serialize(ciphertexts[a:b]) for a, b in pairwise(bounds)]))
    return [mpz(m) for part in parts for m in part]


class ParallelEncryptor:
    """Encrypt lists of plaintexts on ``workers`` processes (default: all cores) with one strategy."""

    def __init__(self, public_key: PublicKey, randomness: RandomnessSpec | str | Randomness = "fresh",
                 workers: int | None = None, *, start_method: str = "spawn", chunks_per_worker: int = 4):
        self.public_key = public_key
        self.workers = max(1, workers or os.cpu_count() or 1)
        if isinstance(randomness, str):
            randomness = RandomnessSpec(randomness)
        if isinstance(randomness, RandomnessSpec):
            self._local: Randomness = build_randomness(public_key, randomness)
            self.spec = randomness
        else:
            self._local = randomness
            self.spec = randomness.spec()
        self.chunks_per_worker = chunks_per_worker
        self._pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context(start_method),
                                             initializer=_init_worker, initargs=(int(public_key.n), self.spec))

    def _chunks(self, k: int) -> list[tuple[int, int]]:
        parts = min(k, self.workers * self.chunks_per_worker)
        bounds = [k * i // parts for i in range(parts + 1)]
        return [(a, b) for a, b in pairwise(bounds) if b > a]

    def encrypt(self, plaintexts: Sequence[int]) -> list[mpz]:
        if self._pool is None or len(plaintexts) < 2 or self._local.name == "pool":
            return encrypt_many(self.public_key, list(plaintexts), self._local)  # a pool is one multiply each
        ms = [int(self.public_key.check_plaintext(m)) for m in plaintexts]
        futs = [self._pool.submit(_encrypt_chunk, ms[a:b]) for a, b in self._chunks(len(ms))]
        out: list[mpz] = []
        for f in futs:
            out.extend(self.public_key.deserialize(f.result(), validate=False))
        return out

    def obfuscators(self, count: int) -> list[mpz]:
        """``count`` fresh obfuscators computed on the workers (e.g. to fill a :class:`PrecomputedPool`)."""
        if self._pool is None:
            return build_randomness(self.public_key, self.spec).obfuscators(count)
        futs = [self._pool.submit(_obfuscator_chunk, b - a) for a, b in self._chunks(count)]
        out: list[mpz] = []
        for f in futs:
            out.extend(self.public_key.deserialize(f.result(), validate=False))
        return out

    def warm_up(self) -> None:
        """Start every worker process now (so the first timed call does not pay for process start-up)."""
        if self._pool is not None:
            list(self._pool.map(_obfuscator_chunk, [1] * self.workers))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ParallelEncryptor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort at interpreter shutdown
        with contextlib.suppress(Exception):
            self.close()

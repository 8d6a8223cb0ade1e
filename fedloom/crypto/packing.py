"""Packing many quantized floats into one Paillier plaintext (BatchCrypt, Zhang et al., USENIX ATC'20).

A float vector x is encoded as follows (``PackingSpec``):

1. **clip** each value to [-c, c] (values beyond are counted: ``clipped``);
2. **quantize** to q bits with the offset that makes everything non-negative:
   t = (x + c) / step with step = 2c / (2^q - 1), so t is in [0, 2^q - 1]; z = round(t) (nearest), or
   z = floor(t + u), u ~ U[0, 1) (stochastic rounding: unbiased, E[z] = t);
3. **weight**: a contributor with integer weight w (1 for a plain sum, n_k for FedAvg's sample weighting)
   contributes w * z;
4. **headroom**: every slot is b = q + h bits with h = ceil(log2 W) for a capacity of W total weight (W = K
   contributors of weight 1), since sum_k w_k z_k <= W (2^q - 1) < 2^b whenever sum_k w_k <= W = 2^h. A sum
   of more weight than the capacity is refused (it would carry into the neighbouring slot);
5. **slots**: s = floor((|n| - 1) / b) slots per plaintext, value j at bits [j*b, (j+1)*b), so a plaintext --
   and any admissible sum of them -- stays below 2^(|n|-1) < n and Paillier's addition mod n never wraps.

Decoding a sum S_j of slot j with total weight W_tot gives the weighted mean
mean_j = step * S_j / W_tot - c.

**Error bound** (tested): for every coordinate j,
|mean_j - sum_k w_k clip(x_kj) / W_tot| <= step / 2 with nearest rounding, < step with stochastic rounding
(where the expected error is 0), up to float64 rounding. The error of a plain sum (all w_k = 1) is at most
K times that. Clipping adds |x| - c for each clipped value; choose c so ``clipped`` stays near 0.

Example (2048-bit key, q = 16, 10 contributors): h = 4, b = 20, s = 102 values per 4096-bit ciphertext,
i.e. 40.2 bits on the wire per float instead of 4096.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.crypto.paillier import CryptoError


@dataclass(frozen=True)
class PackingSpec:
    """How floats are clipped, quantized and packed for a key with ``key_bits``-bit n."""

    key_bits: int
    value_bits: int = 16  # q
    clip: float = 1.0  # c: values are clipped to [-c, c]
    capacity: int = 16  # W: the largest total weight (number of weight-1 contributors) a sum may hold
    stochastic: bool = False  # stochastic rounding (unbiased) instead of round-to-nearest

    def __post_init__(self):
        if not 1 <= self.value_bits <= 48:
            raise CryptoError(f"value_bits must be in [1, 48], got {self.value_bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise CryptoError(f"clip must be a positive finite number, got {self.clip}")
        if self.capacity < 1:
            raise CryptoError(f"capacity must be >= 1, got {self.capacity}")
        if self.slot_bits > 62:
            raise CryptoError(f"slot of {self.slot_bits} bits (q={self.value_bits} + headroom {self.headroom_bits}) "
                              "exceeds 62 bits; lower value_bits or capacity")
        if self.slots < 1:
            raise CryptoError(f"a {self.slot_bits}-bit slot does not fit a {self.key_bits}-bit key")

    @classmethod
    def for_contributors(cls, key_bits: int, contributors: int, **kw) -> PackingSpec:
        """A spec whose headroom holds the plain sum of ``contributors`` weight-1 updates."""
        return cls(key_bits, capacity=contributors, **kw)

    @property
    def headroom_bits(self) -> int:
        return (self.capacity - 1).bit_length()  # = ceil(log2 capacity)

    @property
    def slot_bits(self) -> int:
        return self.value_bits + self.headroom_bits

    @property
    def slots(self) -> int:
        return (self.key_bits - 1) // self.slot_bits

    @property
    def levels(self) -> int:
        return (1 << self.value_bits) - 1

    @property
    def step(self) -> float:
        return 2.0 * self.clip / self.levels

    @property
    def error_bound(self) -> float:
        """Bound on |decoded weighted mean - true weighted mean of the clipped values|, per coordinate."""
        return self.step if self.stochastic else self.step / 2

    def num_plaintexts(self, length: int) -> int:
        return -(-length // self.slots)

    def to_dict(self) -> dict:
        return {"key_bits": self.key_bits, "value_bits": self.value_bits, "clip": self.clip,
                "capacity": self.capacity, "stochastic": self.stochastic}


@dataclass(frozen=True)
class PackedUpdate:
    plaintexts: list[int]
    length: int
    weight: int
    clipped: int  # values that were clipped to [-c, c]


def quantize(x: np.ndarray, spec: PackingSpec, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
    """Clip, offset and quantize ``x`` to uint64 levels in [0, 2^q - 1]; returns (levels, number clipped)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if not np.isfinite(x).all():
        raise CryptoError("update contains NaN or Inf")
    c = spec.clip
    clipped = int(np.count_nonzero(np.abs(x) > c))
    t = (np.clip(x, -c, c) + c) / spec.step
    if spec.stochastic:
        if rng is None:
            raise CryptoError("stochastic rounding needs an explicit numpy Generator (rng=...)")
        z = np.floor(t + rng.random(t.shape))
    else:
        z = np.rint(t)
    return np.clip(z, 0, spec.levels).astype(np.uint64), clipped


def pack(values: np.ndarray, spec: PackingSpec) -> list[int]:
    """Pack non-negative slot values (< 2^slot_bits) into integers of ``spec.slots`` slots each."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    s, b = spec.slots, spec.slot_bits
    if v.size and int(v.max()) >> b:
        raise CryptoError(f"slot value exceeds {b} bits")
    k = spec.num_plaintexts(v.size)
    nbytes = -(-(s * b) // 8)
    out: list[int] = []
    chunk = max(1, (1 << 22) // max(s * b, 1))  # bound the temporary bit matrix to ~4M entries
    shifts = np.arange(b, dtype=np.uint64)
    for lo in range(0, k, chunk):
        hi = min(k, lo + chunk)
        seg = np.zeros((hi - lo) * s, dtype=np.uint64)
        part = v[lo * s : hi * s]
        seg[: part.size] = part
        bits = ((seg[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(hi - lo, s * b)
        if nbytes * 8 != s * b:
            bits = np.pad(bits, ((0, 0), (0, nbytes * 8 - s * b)))
        by = np.packbits(bits, axis=1, bitorder="little")
        out.extend(int.from_bytes(row.tobytes(), "little") for row in by)
    return out


def unpack(plaintexts: Sequence[int], length: int, spec: PackingSpec) -> np.ndarray:
    """Slot values (uint64) of ``plaintexts``, the first ``length`` of them; raises if a plaintext has bits above
    its last slot (a sum that overflowed the packing, or the wrong key / spec)."""
    s, b = spec.slots, spec.slot_bits
    k = len(plaintexts)
    if k != spec.num_plaintexts(length):
        raise CryptoError(f"{k} plaintexts cannot hold {length} values at {s} per plaintext")
    used = s * b
    nbytes = -(-used // 8)
    try:
        raw = b"".join(int(m).to_bytes(nbytes, "little") for m in plaintexts)
    except OverflowError:
        raise CryptoError("a decrypted plaintext exceeds the packing's capacity (overflow or wrong spec)") from None
    by = np.frombuffer(raw, dtype=np.uint8).reshape(k, nbytes)
    weights = np.uint64(1) << np.arange(b, dtype=np.uint64)
    out = np.empty(k * s, dtype=np.uint64)
    chunk = max(1, (1 << 22) // max(used, 1))
    for lo in range(0, k, chunk):
        hi = min(k, lo + chunk)
        bits = np.unpackbits(by[lo:hi], axis=1, bitorder="little")
        if bits[:, used:].any():
            raise CryptoError("a decrypted plaintext exceeds the packing's capacity (overflow or wrong spec)")
        bits = bits[:, :used].reshape((hi - lo) * s, b).astype(np.uint64)
        out[lo * s : hi * s] = (bits * weights).sum(axis=1, dtype=np.uint64)
    return out[:length]


class Packer:
    """Encode one contributor's float vector into plaintexts; decode a sum of them into the weighted mean."""

    def __init__(self, spec: PackingSpec):
        self.spec = spec

    def encode(self, x: np.ndarray, weight: int = 1, rng: np.random.Generator | None = None) -> PackedUpdate:
        w = int(weight)
        if w != weight or not 1 <= w <= self.spec.capacity:
            raise CryptoError(f"weight must be an integer in [1, {self.spec.capacity}] (the packing capacity), got {weight}")
        z, clipped = quantize(x, self.spec, rng)
        return PackedUpdate(pack(z * np.uint64(w), self.spec), int(z.size), w, clipped)

    def decode_sum(self, plaintexts: Sequence[int], length: int, total_weight: int) -> np.ndarray:
        """The weighted mean sum_k w_k x_k / W (float64) from the plaintext sum of contributions of total weight W."""
        W = int(total_weight)
        if not 1 <= W <= self.spec.capacity:
            raise CryptoError(f"total weight {total_weight} outside [1, {self.spec.capacity}] (the packing capacity)")
        S = unpack(plaintexts, length, self.spec)
        if S.size and int(S.max()) > W * self.spec.levels:
            raise CryptoError(f"a slot sum exceeds {W} x (2^{self.spec.value_bits} - 1): wrong total weight or "
                              "a malformed contribution")
        return S.astype(np.float64) * (self.spec.step / W) - self.spec.clip

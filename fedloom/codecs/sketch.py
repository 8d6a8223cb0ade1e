"""Sketched updates (Konecny et al. 2016, Sec. 3): the client computes the full update H, then compresses it.

* ``hadamard``  -- structured random rotation H*D (Walsh-Hadamard times random signs), inverted on the server;
  O(d log d). It spreads a vector's energy evenly, which shrinks the range that quantization must cover
  (Suresh et al. 2017: error down by O(d / log d)).
* ``subsample`` -- keep a random subset of the entries chosen from a shared seed, rescaled so E[H_hat] = H.
* ``quantize``  -- b-bit probabilistic quantization with 2^b levels between min and max (unbiased), bit-packed.

Example::

    from fedloom.codecs import build_codec, chain
    c = chain(build_codec("hadamard"), build_codec("subsample", {"fraction": 0.0625}),
              build_codec("quantize", {"bits": 2}))
"""

from __future__ import annotations

import functools
import math
from typing import Literal, NamedTuple

import numpy as np
import torch
from pydantic import Field, field_validator

from fedloom.codecs.base import CODECS, Codec, CodecParams, LayerSpec
from fedloom.rng import numpy_rng

# -- randomized Walsh-Hadamard rotation --------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _hadamard_matrix(m: int, dtype: torch.dtype) -> torch.Tensor:
    """The unnormalized m x m Sylvester Hadamard matrix (m a power of two)."""
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < m:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def fwht(x: torch.Tensor, radix: int = 16) -> torch.Tensor:
    """Orthonormal fast Walsh-Hadamard transform over the last axis (length a power of two), O(n log n).

    ``H_n = H_r (x) H_{n/r}`` (Sylvester order), applied ``radix`` levels at a time as small dense matmuls (fewer
    passes over memory than one butterfly level per pass), scaled by 1/sqrt(n): orthogonal and its own inverse.
    """
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        r = min(radix, n // h)
        hr = _hadamard_matrix(r, x.dtype)
        y = y.reshape(-1, r) @ hr if h == 1 else hr @ y.reshape(-1, r, h)
        h *= r
    return y.reshape(x.shape) * (1.0 / math.sqrt(n))


class HadamardParams(CodecParams):
    padding: Literal["blocks", "full"] = Field(
        "blocks",
        description="'full': pad d to the next power of two and rotate once (TFF); 'blocks': pad d to a multiple "
        "of min_block and rotate each power-of-two block of its binary expansion (block-diagonal, still "
        "orthogonal; at most min_block-1 padding values instead of up to d-1)",
    )
    min_block: int = Field(256, ge=1, description="smallest block (a power of two) for padding='blocks'")

    @field_validator("min_block")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"min_block must be a power of two, got {v}")
        return v


class HadamardState(NamedTuple):
    n: int  # incoming length d
    blocks: tuple[int, ...]  # power-of-two block lengths; sum = padded length


@CODECS.register("hadamard", HadamardParams, "random rotation H*D (Walsh-Hadamard x random signs), padded to powers of two")
class Hadamard(Codec):
    """Konecny et al. 2016, Sec. 3 "structured random rotations": encode ``HDv``, decode ``D H y`` (H, D orthogonal,
    H symmetric, D = diag(+-1) from the seed). The padding zeros are dropped after decoding."""

    codec_name = "hadamard"
    Params = HadamardParams

    def init(self, spec: LayerSpec, n: int) -> HadamardState:
        if self.p.padding == "full":
            return HadamardState(n, (1 << max(n - 1, 0).bit_length(),))
        unit = min(self.p.min_block, 1 << max(n - 1, 0).bit_length())
        padded = -(-n // unit) * unit
        blocks = tuple(1 << b for b in reversed(range(padded.bit_length())) if padded >> b & 1)
        return HadamardState(n, blocks)

    def out_spec(self, state: HadamardState) -> tuple[int, torch.dtype]:
        return sum(state.blocks), torch.float32

    def _signs(self, state: HadamardState, seed: int) -> torch.Tensor:
        n = sum(state.blocks)
        bits = np.unpackbits(np.frombuffer(numpy_rng(seed, "hadamard-signs").bytes(-(-n // 8)), dtype=np.uint8), count=n)
        return torch.from_numpy(bits.astype(np.float32) * 2 - 1)

    def _rotate(self, x: torch.Tensor, state: HadamardState) -> torch.Tensor:
        return torch.cat([fwht(b) for b in x.split(list(state.blocks))])

    def encode(self, v, state, seed):
        x = torch.zeros(sum(state.blocks), dtype=torch.float32)
        x[: state.n] = v
        return self._rotate(x * self._signs(state, seed), state), state

    def decode(self, out, state, seed):
        return (self._rotate(out.float(), state) * self._signs(state, seed))[: state.n]


def random_subset(n: int, k: int, seed: int, tag: str) -> torch.Tensor:
    """k of range(n), uniformly without replacement, from ``seed``.

    Small k: numpy's ``choice`` (O(k)). Large k: keep each index with probability k/n, then drop or add the few
    surplus/missing ones uniformly at random -- every step is symmetric in the indices, so every k-subset is
    equally likely, and it costs one O(n) pass instead of a partial shuffle of n indices.
    """
    if k >= n:
        return torch.arange(n)
    rng = numpy_rng(seed, tag)
    if 16 * k < n:
        return torch.from_numpy(rng.choice(n, k, replace=False))
    keep = rng.random(n, dtype=np.float32) < k / n
    idx = np.flatnonzero(keep)
    if len(idx) > k:
        idx = np.delete(idx, rng.choice(len(idx), len(idx) - k, replace=False))
    elif len(idx) < k:
        rest = np.flatnonzero(~keep)
        idx = np.concatenate((idx, rest[rng.choice(len(rest), k - len(idx), replace=False)]))
    return torch.from_numpy(idx)


# -- random subsampling ------------------------------------------------------------------------------------


class SubsampleParams(CodecParams):
    fraction: float = Field(..., gt=0, le=1, description="share of the entries kept (the paper's sketch fraction)")


class SubsampleState(NamedTuple):
    n: int  # incoming length
    k: int  # kept entries


@CODECS.register("subsample", SubsampleParams, "keep a seeded random fraction of the entries, rescaled to be unbiased")
class Subsample(Codec):
    """Konecny et al. 2016, Sec. 3 "subsampling": k = round(fraction * n) entries chosen uniformly without
    replacement from the shared seed (so only the seed and the k values travel); the server scatters them back
    scaled by n/k, so each entry is kept with probability k/n and E[H_hat] = H."""

    codec_name = "subsample"
    Params = SubsampleParams

    def init(self, spec: LayerSpec, n: int) -> SubsampleState:
        return SubsampleState(n, max(1, min(n, round(self.p.fraction * n))))

    def out_spec(self, state: SubsampleState) -> tuple[int, torch.dtype]:
        return state.k, torch.float32

    def indices(self, state: SubsampleState, seed: int) -> torch.Tensor:
        return random_subset(state.n, state.k, seed, "subsample")

    def encode(self, v, state, seed):
        return v[self.indices(state, seed)], state

    def decode(self, out, state, seed):
        x = torch.zeros(state.n, dtype=torch.float32)
        x[self.indices(state, seed)] = out.float() * (state.n / state.k)
        return x


# -- b-bit probabilistic quantization + bit packing --------------------------------------------------------


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers 0 <= q < 2^bits into ceil(len(q) * bits / 8) bytes (little-endian bit order)."""
    a = q.to(torch.int32).numpy()
    planes = ((a[:, None] >> np.arange(bits, dtype=np.int32)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack_bits(buf: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` integers of ``bits`` bits each."""
    planes = np.unpackbits(buf.numpy(), count=n * bits, bitorder="little").reshape(n, bits).astype(np.int32)
    return torch.from_numpy((planes << np.arange(bits, dtype=np.int32)).sum(1, dtype=np.int32))


class QuantizeParams(CodecParams):
    bits: int = Field(..., ge=1, le=16, description="b: bits per value; 2^b levels between the vector's min and max")


class QuantizeState(NamedTuple):
    n: int


_RANGE_BYTES = 8  # float32 min and max, in front of the packed values


@CODECS.register("quantize", QuantizeParams, "b-bit unbiased stochastic quantization (2^b levels in [min, max]), bit-packed")
class Quantize(Codec):
    """Konecny et al. 2016, Sec. 3 "probabilistic quantization", with 2^b levels (2^b - 1 intervals) between
    h_min and h_max as in TFMOT (the paper's 1-bit case): with t = (h - h_min) / (h_max - h_min) * (2^b - 1),
    q = floor(t) + Bernoulli(t - floor(t)), so E[q] = t and the decoded value h_min + q * step is unbiased.
    The error of every entry is below one step = (h_max - h_min) / (2^b - 1).

    Wire layout: float32 h_min, float32 h_max, then the q's packed at b bits each: 8 + ceil(n b / 8) bytes.
    """

    codec_name = "quantize"
    terminal = True
    Params = QuantizeParams

    def init(self, spec: LayerSpec, n: int) -> QuantizeState:
        return QuantizeState(n)

    def out_spec(self, state: QuantizeState) -> tuple[int, torch.dtype]:
        return _RANGE_BYTES + -(-state.n * self.p.bits // 8), torch.uint8

    def encode(self, v, state, seed):
        levels = (1 << self.p.bits) - 1
        v = v.float()
        lo, hi = v.min(), v.max()
        span = hi - lo
        t = ((v - lo) / span * levels) if span > 0 else torch.zeros_like(v)
        t = torch.nan_to_num(t, nan=0.0).clamp_(0, levels)  # a NaN/Inf update still encodes; its range is NaN
        fl = t.floor()
        u = torch.from_numpy(numpy_rng(seed, "quantize").random(v.numel(), dtype=np.float32))
        q = (fl + (u < t - fl).float()).clamp_(0, levels)
        rng = torch.stack((lo, hi)).view(torch.uint8)
        return torch.cat((rng, pack_bits(q, self.p.bits))), state

    def decode(self, out, state, seed):
        lo, hi = out[:_RANGE_BYTES].clone().view(torch.float32).tolist()
        q = unpack_bits(out[_RANGE_BYTES:].contiguous(), state.n, self.p.bits).float()
        levels = (1 << self.p.bits) - 1
        return lo + q * ((hi - lo) / levels)

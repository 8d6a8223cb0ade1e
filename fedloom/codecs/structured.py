"""Structured updates (Konecny et al. 2016, Sec. 2): the client *trains* the update in a restricted space.

Each layer is a matrix W in R^{d1 x d2}; a conv kernel (out, in, kh, kw) is the (in*kh*kw) x out matrix.

* ``lowrank`` -- H = A B with A in R^{d1 x k} drawn from the per-round, per-client seed and held fixed; only
  B in R^{k x d2} is trained and sent (saving d1 / k). A ~ N(0, 1/d1), so A^T A ~ I_k and a step on B is a
  gradient step projected on a random k-dimensional subspace. B starts at 0 (H = 0 at the broadcast model).
* ``mask``    -- H is zero outside a random pattern of m entries drawn from the seed; only those m values are
  trained and sent (with the seed).

Training happens through :class:`StructuredReparam`, a reparametrization of the algorithm's functional loss
(params = global + expand(z)) that *both* engines apply (:mod:`fedloom.engine.base`), so vectorized ==
sequential still holds. The server rebuilds A or the pattern from the seed carried in the message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from pydantic import Field

from fedloom.codecs.base import CODECS, Chain, ChainState, Codec, CodecParams, LayerSpec, layer_seed
from fedloom.codecs.sketch import random_subset
from fedloom.rng import torch_generator


class StructuredCodec(Codec):
    """A stage that restricts training: ``train_shape``, ``constants`` (from the seed) and pure ``expand``."""

    structured = True

    def train_shape(self, state: Any) -> tuple[int, ...]:
        raise NotImplementedError

    def constants(self, state: Any, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def expand(self, z: torch.Tensor, consts: Mapping[str, torch.Tensor], state: Any) -> torch.Tensor:
        """The update H (in the parameter's torch layout) from the trained variables ``z``; vmap-safe."""
        raise NotImplementedError

    def out_spec(self, state: Any) -> tuple[int, torch.dtype]:
        n = 1
        for s in self.train_shape(state):
            n *= s
        return n, torch.float32

    def encode(self, v, state, seed):
        n = self.out_spec(state)[0]
        if v.numel() != n:
            raise ValueError(f"{self.codec_name}: expected the {n} trained values, got {v.numel()} "
                             "(was the update trained with this codec's reparametrization?)")
        return v.float(), state

    def decode(self, out, state, seed):
        z = out.float().reshape(self.train_shape(state))
        return self.expand(z, self.constants(state, seed), state).reshape(-1)


class StructuredParams(CodecParams):
    fraction: float = Field(..., gt=0, le=1, description="share of the layer's entries that are trained and sent")


class LowRankState(NamedTuple):
    shape: tuple[int, ...]  # torch layout
    d1: int
    d2: int
    k: int


@CODECS.register("lowrank", StructuredParams, "structured low-rank update H = A B: A from the seed, only B trained and sent")
class LowRank(StructuredCodec):
    """Konecny et al. 2016, Sec. 2 "low rank": k = round(fraction * d1), so B holds ``fraction`` of the entries."""

    codec_name = "lowrank"
    Params = StructuredParams

    def init(self, spec: LayerSpec, n: int) -> LowRankState:
        d1, d2 = spec.matrix_shape
        return LowRankState(spec.shape, d1, d2, max(1, min(d1, round(self.p.fraction * d1))))

    def train_shape(self, state: LowRankState) -> tuple[int, ...]:
        return (state.k, state.d2)

    def constants(self, state: LowRankState, seed: int) -> dict[str, torch.Tensor]:
        g = torch_generator(seed, "lowrank-A")
        return {"A": torch.randn(state.d1, state.k, generator=g) * state.d1 ** -0.5}

    def expand(self, z, consts, state):
        return (consts["A"] @ z).t().reshape(state.shape)


class MaskState(NamedTuple):
    shape: tuple[int, ...]
    n: int
    m: int


@CODECS.register("mask", StructuredParams, "structured random-mask update: only a seeded random subset of entries is trained and sent")
class RandomMask(StructuredCodec):
    """Konecny et al. 2016, Sec. 2 "random mask": m = round(fraction * d1 d2) entries, uniformly without replacement."""

    codec_name = "mask"
    Params = StructuredParams

    def init(self, spec: LayerSpec, n: int) -> MaskState:
        return MaskState(spec.shape, n, max(1, min(n, round(self.p.fraction * n))))

    def train_shape(self, state: MaskState) -> tuple[int, ...]:
        return (state.m,)

    def constants(self, state: MaskState, seed: int) -> dict[str, torch.Tensor]:
        return {"idx": random_subset(state.n, state.m, seed, "mask")}

    def expand(self, z, consts, state):
        return z.new_zeros(state.n).scatter(0, consts["idx"], z).reshape(state.shape)


class StructuredReparam:
    """The engines' reparametrization for a chain's structured layers (see ``Reparametrization`` in
    :mod:`fedloom.engine.base`): client k trains z = {B or masked values on structured layers, W elsewhere},
    starting from z0 = {0, W_global}, and the loss sees params = expand(z) = {W_global + H(z), W}. The update
    z - z0 is then {B or values, W - W_global}, exactly what the chain encodes."""

    def __init__(self, chain: Chain, state: ChainState, key: Callable[[int], int]):
        self.key = key
        self.layers: dict[str, tuple[int, StructuredCodec, Any]] = {}
        for name, (idx, states) in state.layers.items():
            stage = chain.stages[idx[0]]
            if isinstance(stage, StructuredCodec):
                self.layers[name] = (idx[0], stage, states[0])

    def __bool__(self) -> bool:
        return bool(self.layers)

    def client_init(self, global_params: Mapping[str, torch.Tensor], client: int):
        key = self.key(client)
        z0: dict[str, torch.Tensor] = {}
        consts: dict[str, torch.Tensor] = {}
        for name, p in global_params.items():
            if name not in self.layers:
                z0[name] = p
                continue
            i, stage, st = self.layers[name]
            z0[name] = torch.zeros(stage.train_shape(st), dtype=p.dtype, device=p.device)
            for cname, c in stage.constants(st, layer_seed(key, i, name)).items():
                consts[f"{name}:{cname}"] = c.to(p.device)
        return z0, consts

    def expand(self, z, consts, global_params):
        out = dict(z)
        for name, (_, stage, st) in self.layers.items():
            prefix = f"{name}:"
            c = {k[len(prefix):]: v for k, v in consts.items() if k.startswith(prefix)}
            out[name] = global_params[name] + stage.expand(z[name], c, st)
        return out

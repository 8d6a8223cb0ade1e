"""Top-k sparsification with error feedback: a *stateful* sketch (the client remembers what it did not send).

* ``topk`` -- send the k entries of largest magnitude (Aji & Heafield 2017, "Sparse Communication for
  Distributed Gradient Descent"), with their indices; with ``error_feedback`` the client keeps the rest in a
  residual memory ``e`` and adds it to the next round's update (Stich, Cordonnier & Jaggi 2018, "Sparsified SGD
  with Memory", Alg. 1; Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient Compression
  Schemes", Alg. 2)::

      a   = v + e                      # the update plus what earlier rounds left unsent
      idx = top-k of |a|               # ties: the lower index first (deterministic)
      send (a[idx], idx);  e' = a - scatter(idx, a[idx])

  so over T rounds ``sum_t decode(out_t) + e_T == sum_t v_t``: nothing is lost, only delayed. Unlike
  ``subsample`` the kept set depends on the data, so the indices travel (4 bytes each) and the estimate is
  biased; the memory is what makes the bias harmless (Stich et al., Thm. 2.4).

The residual is per (client, layer) state, returned by :meth:`TopK.encode` and kept by
:class:`fedloom.codecs.UpdateCodec` in ``states[client]``; the server decodes with the static plan only.

Example::

    from fedloom.codecs import build_codec
    c = build_codec("topk", {"fraction": 0.01})          # or {"k": 100}; {"error_feedback": False} = plain top-k
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from pydantic import Field, model_validator

from fedloom.codecs.base import CODECS, Codec, CodecParams, LayerSpec
from fedloom.wire import MessageError


class TopKParams(CodecParams):
    fraction: float | None = Field(None, gt=0, le=1, description="share of the entries sent: k = max(1, ceil(fraction * n))")
    k: int | None = Field(None, ge=1, description="number of entries sent per layer (overrides fraction; at most the "
                          "layer's size)")
    error_feedback: bool = Field(True, description="keep what is not sent in a per-client residual and add it to the "
                                 "next round's update (Stich et al. 2018); false = plain top-k")

    @model_validator(mode="after")
    def _one_size(self) -> TopKParams:
        if self.fraction is None and self.k is None:
            raise ValueError("set fraction or k")
        return self


class TopKState(NamedTuple):
    n: int  # incoming length
    k: int  # entries sent
    residual: torch.Tensor | None = None  # the client's memory e (float32, length n); None = zero (the plan)


_VALUE = np.dtype("<f4")  # little-endian float32 values, then little-endian int32 indices
_INDEX = np.dtype("<i4")


def top_indices(a: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (int64, ascending) of the ``k`` entries of largest ``|a|``; among equal magnitudes the lower index
    wins, whatever ``torch.topk`` does with ties. NaN and +-Inf rank above every finite value. O(n)."""
    n = a.numel()
    if k >= n:
        return torch.arange(n)
    mag = torch.nan_to_num(a.abs(), nan=math.inf)
    thr = torch.topk(mag, k, sorted=False).values.min()  # the k-th largest magnitude (a value: no tie question)
    above = torch.nonzero(mag > thr).reshape(-1)
    at = torch.nonzero(mag == thr).reshape(-1)[: k - above.numel()]  # nonzero is ascending: lowest indices first
    return torch.cat((above, at)).sort().values


@CODECS.register("topk", TopKParams, "top-k magnitude sparsification with error feedback (per-client residual memory)")
class TopK(Codec):
    """Aji & Heafield 2017 top-k sparsification with Stich et al. 2018 / Karimireddy et al. 2019 error feedback.

    k = ``k`` if set, else max(1, ceil(fraction * n)). Wire layout of a layer (one uint8 tensor, terminal):
    k little-endian float32 values, then their k little-endian int32 indices in strictly increasing order:
    8 k bytes. The server validates both as untrusted input before scattering them into zeros(n).
    """

    codec_name = "topk"
    terminal = True  # emits packed bytes: nothing can follow it on a layer
    stateful = True  # encode returns the client's new residual: the runtime must keep (and checkpoint) it
    Params = TopKParams
    p: TopKParams

    def init(self, spec: LayerSpec, n: int) -> TopKState:
        f = self.p.fraction
        k = self.p.k if self.p.k is not None else max(1, math.ceil((f if f is not None else 1.0) * n))
        if k > n:
            raise ValueError(f"topk: k={k} exceeds the {n} values of {spec.name!r}")
        if n >= 1 << 31:
            raise ValueError(f"topk: {spec.name!r} has {n} values; int32 indices address at most 2^31 - 1")
        return TopKState(n, k)

    def out_spec(self, state: TopKState) -> tuple[int, torch.dtype]:
        return 8 * state.k, torch.uint8

    def encode(self, v, state, seed):
        a = v.detach().reshape(-1).to(torch.float32, copy=True)  # a copy: v (the caller's update) is never mutated
        if state.residual is not None:
            a.add_(state.residual.to(a.device))
        idx = top_indices(a, state.k)
        buf = a[idx].cpu().numpy().astype(_VALUE).tobytes() + idx.cpu().numpy().astype(_INDEX).tobytes()
        out = torch.from_numpy(np.frombuffer(buf, dtype=np.uint8).copy())
        if not self.p.error_feedback:
            return out, state
        a[idx] = 0.0  # e' = a - scatter(idx, a[idx]), exactly (a sent NaN/Inf is not remembered either)
        return out, state._replace(residual=a)

    def decode(self, out, state, seed):
        n, k = state.n, state.k
        if out.dtype != torch.uint8 or out.dim() != 1 or out.numel() != 8 * k:
            raise MessageError(f"topk: expected {8 * k} bytes (k={k} values and indices), got "
                               f"{out.numel()} of {out.dtype} with shape {tuple(out.shape)}")
        raw = out.detach().cpu().contiguous().numpy().tobytes()
        vals = np.frombuffer(raw, dtype=_VALUE, count=k)
        idx = np.frombuffer(raw, dtype=_INDEX, count=k, offset=4 * k).astype(np.int64)
        if idx.min() < 0 or idx.max() >= n:
            bad = idx[(idx < 0) | (idx >= n)][0]
            raise MessageError(f"topk: index {int(bad)} out of range [0, {n})")
        if k > 1 and not (np.diff(idx) > 0).all():
            i = int(np.flatnonzero(np.diff(idx) <= 0)[0])
            raise MessageError(f"topk: indices must be strictly increasing; position {i + 1} has {int(idx[i + 1])} "
                               f"after {int(idx[i])}")
        if not np.isfinite(vals).all():
            raise MessageError(f"topk: {int((~np.isfinite(vals)).sum())} value(s) are NaN or Inf")
        x = torch.zeros(n, dtype=torch.float32)
        x[torch.from_numpy(idx)] = torch.from_numpy(vals.astype(np.float32))
        return x

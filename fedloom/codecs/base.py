"""Update codecs: per-layer stages with explicit state, composed by :func:`chain` (optax-style).

A *stage* (one registered codec: ``hadamard``, ``subsample``, ``quantize``, ``lowrank``, ``mask``) transforms
one layer's flattened update ``v`` on the client and undoes it on the server:

    state = stage.init(spec, n)            # per-layer plan for an input of n values (sizes, block layout)
    out, state = stage.encode(v, state, seed)
    v_hat = stage.decode(out, state, seed)

State is passed in and returned, never hidden (STYLE.md 5). The built-in stages carry only their static
per-layer plan and return it unchanged; a stage with memory across rounds (e.g. error feedback) would return
a new one. ``seed`` is the stage's per-(round, client, layer) seed (:func:`layer_seed`): everything the server
must regenerate (a rotation's signs, a subsampling mask, a low-rank ``A``) comes from it, so only the seed
travels, never the mask.

:func:`chain` composes stages per layer (each stage applies to the layers its ``layers`` selection picks) and
the server decodes in reverse order (cf. pfl's ``for p in self._postprocessors[::-1]``). Layers no stage
selects travel as raw float32. Konecny et al. (2016), Sec. 2-3, compress "only the inner layers"; the
``layers: inner`` selection does that.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedloom.registry import Registry
from fedloom.rng import derive_seed

CODECS: Registry[Any] = Registry("codec")

Params = dict[str, torch.Tensor]


class CodecParams(BaseModel):
    """Parameters every codec takes."""

    model_config = ConfigDict(extra="forbid")
    layers: Literal["all", "inner"] | list[str] = Field(
        "all",
        description="which parameters this codec compresses: 'all' = every weight matrix/kernel (ndim >= 2), "
        "'inner' = those of every layer but the first and the last (Konecny et al.), or a list of glob "
        "patterns over parameter names, e.g. ['3.weight', '7.*']",
    )


@dataclass(frozen=True)
class LayerSpec:
    """One parameter tensor of the model, as the codecs see it."""

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """Konecny et al.'s (d1, d2): a torch weight (out, in, *k) is the matrix (in * prod(k)) x out."""
        if len(self.shape) < 2:
            raise ValueError(f"parameter {self.name!r} of shape {self.shape} is not a matrix or kernel")
        return self.numel // self.shape[0], self.shape[0]


class Codec:
    """One stage. Subclasses implement :meth:`init`, :meth:`encode`, :meth:`decode` on flat float tensors."""

    codec_name: ClassVar[str] = "codec"  # its registry name
    structured: ClassVar[bool] = False  # changes client training (see fedloom.codecs.structured)
    terminal: ClassVar[bool] = False  # emits bytes (uint8): nothing can follow it on a layer
    stateful: ClassVar[bool] = False  # encode returns a new per-client state (memory across rounds, checkpointed)
    Params: ClassVar[type[CodecParams]] = CodecParams

    def __init__(self, params: CodecParams | None = None):
        self.p = params or self.Params()

    def init(self, spec: LayerSpec, n: int) -> Any:
        """This stage's state for a layer whose incoming flat vector has ``n`` values."""
        raise NotImplementedError

    def out_spec(self, state: Any) -> tuple[int, torch.dtype]:
        """(length, dtype) of the flat tensor :meth:`encode` emits."""
        raise NotImplementedError

    def encode(self, v: torch.Tensor, state: Any, seed: int) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def decode(self, out: torch.Tensor, state: Any, seed: int) -> torch.Tensor:
        raise NotImplementedError


def build_codec(name: str, params: Mapping[str, Any] | BaseModel | None = None) -> Codec:
    """A codec from its registry name and (raw or validated) parameters."""
    e = CODECS.entry(name)
    p = params if isinstance(params, BaseModel) else e.params(**dict(params or {}))
    return e.factory(p)


def layer_seed(key: int, stage: int, layer: str) -> int:
    """The seed of stage ``stage`` on ``layer``, from a message's key = derive_seed(run seed, 'codecs', round, client)."""
    return derive_seed(key & 0xFFFFFFFF, key >> 32, "codec-stage", stage, layer)  # all 63 bits of the key count


def select_layers(layers: str | Sequence[str], specs: Sequence[LayerSpec], where: str = "layers") -> list[str]:
    """Parameter names picked by a ``layers`` selection (in model order).

    ``all`` and ``inner`` pick weight tensors (ndim >= 2; biases travel raw, < 0.1% of the CNN). Layers are
    grouped by module prefix (``7.weight`` and ``7.bias`` form layer ``7``); ``inner`` drops the first and the
    last layer, as Konecny et al. do for their CIFAR model. A glob that matches nothing is an error.
    """
    if isinstance(layers, str):
        groups: list[str] = []
        for s in specs:
            g = s.name.rpartition(".")[0]
            if g not in groups:
                groups.append(g)
        keep = set(groups[1:-1]) if layers == "inner" else set(groups)
        return [s.name for s in specs if len(s.shape) >= 2 and s.name.rpartition(".")[0] in keep]
    names = [s.name for s in specs]
    for pat in layers:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ValueError(f"{where}: pattern {pat!r} matches no parameter; parameters: {', '.join(names)}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in layers)]


class ChainState(NamedTuple):
    """State of a :class:`Chain`: for each compressed layer, its stage indices and their states (in order)."""

    layers: dict[str, tuple[tuple[int, ...], tuple[Any, ...]]]


class Chain:
    """Stages composed per layer; encode runs them in order, decode in reverse (optax ``chain``)."""

    def __init__(self, stages: Sequence[Codec]):
        self.stages = list(stages)

    # -- planning -------------------------------------------------------------------------------------------
    def init(self, specs: Sequence[LayerSpec]) -> ChainState:
        """Plan every layer. Raises ValueError naming ``codecs.<i>`` for an impossible composition."""
        picked = [set(select_layers(s.p.layers, specs, f"codecs.{i}.layers")) for i, s in enumerate(self.stages)]
        out: dict[str, tuple[tuple[int, ...], tuple[Any, ...]]] = {}
        for spec in specs:
            idx = tuple(i for i, sel in enumerate(picked) if spec.name in sel)
            if not idx:
                continue
            states, n = [], spec.numel
            for j, i in enumerate(idx):
                st = self.stages[i]
                if st.structured and j > 0:
                    raise ValueError(f"codecs.{i}: {_stage_name(st)} changes client training and must be the first "
                                     f"codec on {spec.name!r}")
                if j > 0 and self.stages[idx[j - 1]].terminal:
                    raise ValueError(f"codecs.{i}: nothing can follow {_stage_name(self.stages[idx[j - 1]])} "
                                     f"on {spec.name!r} (it emits packed bits)")
                try:
                    s = st.init(spec, n)
                except ValueError as e:
                    raise ValueError(f"codecs.{i}: {e}") from None
                states.append(s)
                n = st.out_spec(s)[0]
            out[spec.name] = (idx, tuple(states))
        return ChainState(out)

    def wire_layout(self, specs: Sequence[LayerSpec], state: ChainState) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The (shape, dtype) of every wire entry: what the server expects to receive."""
        lay: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for spec in specs:
            if spec.name in state.layers:
                idx, states = state.layers[spec.name]
                n, dt = self.stages[idx[-1]].out_spec(states[-1])
                lay[spec.name] = ((n,), dt)
            else:
                lay[spec.name] = (spec.shape, torch.float32)
        return lay

    def training_shapes(self, specs: Sequence[LayerSpec], state: ChainState) -> dict[str, tuple[int, ...]]:
        """Shape of each entry of a client's update (the reduced shape where a structured codec trains)."""
        shapes = {}
        for spec in specs:
            shapes[spec.name] = spec.shape
            if spec.name in state.layers:
                idx, states = state.layers[spec.name]
                if self.stages[idx[0]].structured:
                    shapes[spec.name] = self.stages[idx[0]].train_shape(states[0])
        return shapes

    # -- client / server ------------------------------------------------------------------------------------
    def encode(self, update: Mapping[str, torch.Tensor], state: ChainState, key: int) -> tuple[Params, ChainState]:
        """Client side: every entry of ``update`` -> the tensor that goes on the wire, plus the new state."""
        out: Params = {}
        new = dict(state.layers)
        for name, t in update.items():
            if name not in state.layers:
                out[name] = t.detach().float()
                continue
            idx, states = state.layers[name]
            v = t.detach().reshape(-1).float()
            nxt = []
            for i, s in zip(idx, states):
                v, s = self.stages[i].encode(v, s, layer_seed(key, i, name))
                nxt.append(s)
            out[name] = v
            new[name] = (idx, tuple(nxt))
        return out, ChainState(new)

    def decode(self, wire_tensors: Mapping[str, torch.Tensor], state: ChainState, key: int,
               shapes: Mapping[str, tuple[int, ...]]) -> Params:
        """Server side: undo the stages in reverse order and restore each parameter's shape."""
        out: Params = {}
        for name, t in wire_tensors.items():
            if name not in state.layers:
                out[name] = t
                continue
            idx, states = state.layers[name]
            v = t
            for i, s in zip(reversed(idx), reversed(states)):
                v = self.stages[i].decode(v, s, layer_seed(key, i, name))
            out[name] = v.reshape(shapes[name])
        return out


def _stage_name(stage: Codec) -> str:
    return repr(stage.codec_name)


def chain(*stages: Codec) -> Chain:
    """Compose stages: ``chain(hadamard, subsample, quantize)`` encodes in that order and decodes in reverse."""
    return Chain(stages)

"""Grouped (Psi-Net) models for Fed2's structure adaptation (Yu et al., "Fed2: Feature-Aligned Federated
Learning", KDD'21, arXiv 2111.14248; earlier "Psi-Net", arXiv 2008.06767).

Structure (Fed2 section "feature-oriented structure adaptation"; see ``shared/papers.md`` section 1):

1. the first ``depth`` layers (the *decoupling depth* d) are ordinary shared layers;
2. every later hidden layer is split into ``groups`` (G) groups: a group convolution (``Conv2d(groups=G)``)
   or a block-diagonal linear layer, so group g's units only see group g's units of the previous layer;
3. instead of one classifier, group g has its own head that emits logits only for its class subset C_g
   (``class_to_group``); the logits are put back in class order and trained with plain softmax
   cross-entropy. The logit of a class c in C_g therefore depends only on the shared layers and group g
   ("gradient redirection": the positive-class gradient of c flows into group g only).

Every grouped model exposes ``group_layout``: parameter name -> (dim, owner) where ``owner[i]`` is the group
that owns index i along ``dim``. Parameters not listed are shared. Fed2's feature-paired averaging
(:mod:`fedloom.algorithms.fed2`) uses it to average group g only with group g.

Choices the paper leaves open are explicit parameters: ``depth`` (the paper picks d from a feature analysis
whose criterion is unverified), ``groups``, ``class_to_group`` (default: contiguous, near-equal blocks of
classes) and ``group_input`` -- whether the first grouped layer splits the shared features into G chunks
(``split``, the literal ``Conv2d(groups=G)`` reading) or lets every group read all shared features (``full``).

No BatchNorm: the models are vmap-safe and run on the vectorized engine.

Example::

    >>> import torch
    >>> from fedloom.models import build_model
    >>> m = build_model("grouped_mlp", {"hidden": [64, 32], "groups": 2, "depth": 1}, (1, 8, 8), 10)
    >>> m(torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator
from torch import nn

from fedloom.models import _Params
from fedloom.registry import MODELS

GroupLayout = dict[str, tuple[int, torch.Tensor]]


class BlockLinear(nn.Module):
    """A linear layer whose G output blocks each see one input block (``split``) or the whole input (``full``).

    ``weight`` is [G, out_g, in_g] (split: in_g = in_features / G) or [G, out_g, in_features] (full); output
    block g occupies features [g*out_g, (g+1)*out_g). Written with einsum, so it is vmap-safe.
    """

    def __init__(self, in_features: int, out_features: int, groups: int, split: bool):
        super().__init__()
        if out_features % groups:
            raise ValueError(f"grouped layer: width {out_features} is not divisible by groups={groups}")
        if split and in_features % groups:
            raise ValueError(f"grouped layer: input width {in_features} is not divisible by groups={groups} "
                             "(use group_input='full' or another depth)")
        self.groups, self.split = groups, split
        in_g = in_features // groups if split else in_features
        out_g = out_features // groups
        bound = 1.0 / math.sqrt(in_g)  # nn.Linear's default init, per block
        self.weight = nn.Parameter(torch.empty(groups, out_g, in_g).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, out_g).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            y = torch.einsum("ngi,goi->ngo", x.reshape(x.shape[0], self.groups, -1), self.weight)
        else:
            y = torch.einsum("ni,goi->ngo", x, self.weight)
        return (y + self.bias).reshape(x.shape[0], -1)


class GroupedNet(nn.Module):
    """shared trunk -> grouped trunk -> one head per group -> logits in class order."""

    def __init__(self, shared: nn.Sequential, grouped: nn.Sequential, heads: nn.ModuleList, head_split: bool,
                 class_to_group: list[int], group_layout: GroupLayout):
        super().__init__()
        self.shared, self.grouped, self.heads = shared, grouped, heads
        self.num_groups = len(heads)
        self.head_split = head_split
        self.class_to_group = list(class_to_group)
        self.group_layout = group_layout
        order = [c for g in range(self.num_groups) for c in range(len(class_to_group)) if class_to_group[c] == g]
        # position of class c in the group-major concatenation of head outputs
        self.register_buffer("class_pos", torch.tensor(order).argsort(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.grouped(self.shared(x)).flatten(1)
        parts = h.chunk(self.num_groups, dim=1) if self.head_split else [h] * self.num_groups
        logits = torch.cat([head(p) for head, p in zip(self.heads, parts)], dim=1)
        return logits.index_select(1, self.class_pos)


class GroupedParams(_Params):
    groups: int = Field(2, ge=1, description="G: number of feature groups (one head per group)")
    depth: int = Field(1, ge=0, description="decoupling depth d: number of leading hidden layers kept shared")
    class_to_group: list[int] | None = Field(
        None, description="group of each class (length num_classes); default: contiguous near-equal blocks")
    group_input: str = Field("split", pattern="^(split|full)$",
                             description="first grouped layer: 'split' = group g sees chunk g of the shared "
                                         "features (Conv2d(groups=G)); 'full' = every group sees all of them")


class GroupedMLPParams(GroupedParams):
    hidden: list[int] = Field(default_factory=lambda: [200, 200], min_length=1, description="hidden widths")

    @field_validator("hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("hidden widths must be >= 1")
        return v


class GroupedCNNParams(GroupedParams):
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    hidden: int = Field(512, ge=1, description="width of the FC layer after the convolutions")
    kernel_size: int = Field(5, ge=1)


def class_groups(num_classes: int, p: GroupedParams) -> list[int]:
    """The class -> group map: the configured one (validated) or contiguous near-equal blocks."""
    G = p.groups
    if G > num_classes:
        raise ValueError(f"groups={G} exceeds num_classes={num_classes}: a group needs at least one class")
    if p.class_to_group is None:
        return [c * G // num_classes for c in range(num_classes)]
    m = list(p.class_to_group)
    if len(m) != num_classes:
        raise ValueError(f"class_to_group has {len(m)} entries, the dataset has {num_classes} classes")
    if any(not 0 <= g < G for g in m) or set(m) != set(range(G)):
        raise ValueError(f"class_to_group must use every group 0..{G - 1} (each group needs a class), got {m}")
    return m


def _owner(n: int, groups: int) -> torch.Tensor:
    return torch.arange(n) // (n // groups)


def _check_depth(p: GroupedParams, n_layers: int) -> None:
    if p.depth > n_layers:
        raise ValueError(f"depth={p.depth} exceeds the {n_layers} hidden layers")


def _heads(in_features: int, split: bool, cmap: list[int], G: int, layout: GroupLayout) -> nn.ModuleList:
    if split and in_features % G:
        raise ValueError(f"head input width {in_features} is not divisible by groups={G} (use group_input='full')")
    fin = in_features // G if split else in_features
    heads = nn.ModuleList(nn.Linear(fin, cmap.count(g)) for g in range(G))
    for g, h in enumerate(heads):
        for n, t in h.named_parameters():
            layout[f"heads.{g}.{n}"] = (0, torch.full((t.shape[0],), g))
    return heads


@MODELS.register("grouped_mlp", GroupedMLPParams,
                 "Fed2/Psi-Net MLP: shared layers, block-diagonal groups, per-group heads")
def grouped_mlp(input_shape: tuple[int, ...], num_classes: int, p: GroupedMLPParams) -> nn.Module:
    G = p.groups
    _check_depth(p, len(p.hidden))
    cmap = class_groups(num_classes, p)
    layout: GroupLayout = {}
    shared: list[nn.Module] = [nn.Flatten()]
    grouped: list[nn.Module] = []
    d = math.prod(input_shape)
    for i, h in enumerate(p.hidden):
        if i < p.depth:
            shared += [nn.Linear(d, h), nn.ReLU()]
        else:
            first = i == p.depth
            layer = BlockLinear(d, h, G, split=not first or p.group_input == "split")
            idx = len(grouped)
            layout[f"grouped.{idx}.weight"] = (0, torch.arange(G))
            layout[f"grouped.{idx}.bias"] = (0, torch.arange(G))
            grouped += [layer, nn.ReLU()]
        d = h
    head_split = p.depth < len(p.hidden) or p.group_input == "split"
    heads = _heads(d, head_split, cmap, G, layout)
    return GroupedNet(nn.Sequential(*shared), nn.Sequential(*grouped), heads, head_split, cmap, layout)


@MODELS.register("grouped_cnn", GroupedCNNParams,
                 "Fed2/Psi-Net CNN: shared convs, group convs + block-diagonal FC, per-group heads")
def grouped_cnn(input_shape: tuple[int, ...], num_classes: int, p: GroupedCNNParams) -> nn.Module:
    """McMahan et al.'s CNN (conv5x5 + ReLU + maxpool per stage, FC ``hidden``) with layers ``depth``.. grouped.

    Layer indices count the convolutions and then the FC layer, so ``depth = len(channels) + 1`` groups only
    the heads.
    """
    if len(input_shape) != 3:
        raise ValueError(f"grouped_cnn needs (channels, height, width) inputs, got shape {input_shape}")
    G = p.groups
    _check_depth(p, len(p.channels) + 1)
    cmap = class_groups(num_classes, p)
    layout: GroupLayout = {}
    c, h, w = input_shape
    shared: list[nn.Module] = []
    grouped: list[nn.Module] = []
    for i, out in enumerate(p.channels):
        if i < p.depth:
            shared += [nn.Conv2d(c, out, p.kernel_size, padding=p.kernel_size // 2), nn.ReLU(), nn.MaxPool2d(2)]
        else:
            first = i == p.depth
            split = not first or p.group_input == "split"
            if out % G or (split and c % G):
                raise ValueError(f"grouped_cnn layer {i}: channels {c}->{out} not divisible by groups={G}"
                                 + (" (use group_input='full' or depth>=1)" if first else ""))
            conv = nn.Conv2d(c, out, p.kernel_size, padding=p.kernel_size // 2, groups=G if split else 1)
            idx = len(grouped)
            layout[f"grouped.{idx}.weight"] = (0, _owner(out, G))
            layout[f"grouped.{idx}.bias"] = (0, _owner(out, G))
            grouped += [conv, nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"grouped_cnn: input {input_shape} too small for {len(p.channels)} pooling stages")
    (grouped if grouped else shared).append(nn.Flatten())
    if p.depth <= len(p.channels):
        # the FC layer is grouped; conv features are channel-major after Flatten, so group g's are contiguous
        first = p.depth == len(p.channels)
        fc = BlockLinear(c * h * w, p.hidden, G, split=not first or p.group_input == "split")
        idx = len(grouped)
        layout[f"grouped.{idx}.weight"] = (0, torch.arange(G))
        layout[f"grouped.{idx}.bias"] = (0, torch.arange(G))
        grouped += [fc, nn.ReLU()]
        head_split = True
    else:
        shared += [nn.Linear(c * h * w, p.hidden), nn.ReLU()]
        head_split = p.group_input == "split"
    heads = _heads(p.hidden, head_split, cmap, G, layout)
    return GroupedNet(nn.Sequential(*shared), nn.Sequential(*grouped), heads, head_split, cmap, layout)

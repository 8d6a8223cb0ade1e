"""Model builders. Defaults contain no BatchNorm (GroupNorm or no norm), so that the vectorized engine --
which runs a whole cohort through ``torch.func.vmap`` -- computes exactly what per-client training computes.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedloom.registry import MODELS


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


@MODELS.register("logreg", _Params, "multinomial logistic regression")
def logreg(input_shape: tuple[int, ...], num_classes: int, p: _Params) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


class MLPParams(_Params):
    hidden: list[int] = Field(default_factory=lambda: [200, 200], description="hidden widths; [200, 200] is McMahan's 2NN")


@MODELS.register("mlp", MLPParams, "MLP with ReLU; default is McMahan et al.'s 2NN (784-200-200-10)")
def mlp(input_shape: tuple[int, ...], num_classes: int, p: MLPParams) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    d = math.prod(input_shape)
    for h in p.hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


class CNNParams(_Params):
    channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1)
    hidden: int = Field(512, ge=1)
    kernel_size: int = Field(5, ge=1)
    norm: str = Field("none", pattern="^(none|group)$", description="'group' adds GroupNorm after each conv (vmap-safe)")
    groups: int = Field(8, ge=1, description="GroupNorm groups when norm='group'")


@MODELS.register("cnn", CNNParams, "McMahan et al.'s CNN: 2x (conv5x5 + ReLU + maxpool), FC 512, FC out")
def cnn(input_shape: tuple[int, ...], num_classes: int, p: CNNParams) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs (channels, height, width) inputs, got shape {input_shape}")
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in p.channels:
        layers.append(nn.Conv2d(c, out, p.kernel_size, padding=p.kernel_size // 2))
        if p.norm == "group":
            layers.append(nn.GroupNorm(math.gcd(p.groups, out), out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    if h < 1 or w < 1:
        raise ValueError(f"cnn: input {input_shape} too small for {len(p.channels)} pooling stages")
    layers += [nn.Flatten(), nn.Linear(c * h * w, p.hidden), nn.ReLU(), nn.Linear(p.hidden, num_classes)]
    return nn.Sequential(*layers)


def build_model(name: str, params: dict | None, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    entry = MODELS.entry(name)
    return entry.factory(tuple(input_shape), num_classes, entry.params(**(params or {})))


def vmap_unsafe_reason(model: nn.Module) -> str | None:
    """Why ``model`` should not be trained under vmap (inexact, random, or no batching rule), or None."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return f"module {name or type(m).__name__!r} is BatchNorm (running statistics are updated in place)"
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return f"module {name or type(m).__name__!r} is Dropout with p={m.p} (random draws under vmap)"
        if isinstance(m, nn.RNNBase):
            return (f"module {name or type(m).__name__!r} is a fused RNN ({type(m).__name__}): vmap has no batching "
                    "rule for it and would loop per sample, slower than the sequential engine")
    return None


from fedloom.models import grouped, lstm, transformer  # noqa: E402,F401  (registration: grouped_*, lstm, transformer)

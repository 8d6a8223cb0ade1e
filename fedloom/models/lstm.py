"""LEAF's Shakespeare baseline: character embedding (8) -> 2-layer LSTM (256 units) -> next character.

Caldas et al. 2018, "LEAF: A Benchmark for Federated Settings", section 4 (the model of McMahan et al. 2017's
Shakespeare experiments): 80 input characters, an 8-dimensional embedding, two LSTM layers of 256 units and a
softmax over the vocabulary for the character that follows.

``nn.LSTM`` has no vmap batching rule (``torch.func.vmap`` would loop over samples, several times slower), so
:func:`fedloom.models.vmap_unsafe_reason` reports it and a run asking for the vectorized engine falls back to
the sequential one, with a warning.

Example::

    from fedloom.models import build_model
    m = build_model("lstm", {}, (80,), 78)
    m(torch.randint(0, 78, (4, 80))).shape  # (4, 78)
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedloom.registry import MODELS


class CharLSTM(nn.Module):
    """Token ids [B, T] -> logits [B, C] (last position) or [B, C, T] with ``per_position``."""

    def __init__(self, vocab_size: int, num_classes: int, embed: int = 8, hidden: int = 256, layers: int = 2,
                 per_position: bool = False):
        super().__init__()
        self.per_position = per_position
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x.long()))
        if self.per_position:
            return self.out(h).transpose(1, 2)
        return self.out(h[:, -1])


class LSTMParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    embed: int = Field(8, ge=1, description="character embedding size (LEAF: 8)")
    hidden: int = Field(256, ge=1, description="LSTM units per layer (LEAF: 256)")
    layers: int = Field(2, ge=1, description="stacked LSTM layers (LEAF: 2)")
    per_position: bool = Field(False, description="logits at every position [B, V, T] (dataset targets='all')")
    vocab_size: int | None = Field(None, ge=2, description="input vocabulary; default: fedloom.data.text's")


@MODELS.register("lstm", LSTMParams, "LEAF's Shakespeare model: embed 8, 2-layer LSTM 256, next character")
def lstm(input_shape: tuple[int, ...], num_classes: int, p: LSTMParams) -> nn.Module:
    from fedloom.data.text import VOCAB_SIZE

    if len(input_shape) != 1:
        raise ValueError(f"lstm needs token-id sequences [T], got input shape {input_shape}")
    return CharLSTM(p.vocab_size or VOCAB_SIZE, num_classes, p.embed, p.hidden, p.layers, p.per_position)

"""A decoder-only (causal) Transformer for federated character-level language modelling.

Built from the parts of Vaswani et al. 2017, "Attention Is All You Need" (../shared/papers.md section 8):

* scaled dot-product attention, Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V (section 3.2.1, eq. 1),
  with a causal mask so position t attends to positions <= t only (the decoder's masking, section 3.2.3);
* multi-head attention, MultiHead = Concat(head_1..head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)
  (section 3.2.2);
* the position-wise feed-forward network FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (section 3.3, eq. 2);
* sinusoidal positional encoding PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)
  (section 3.5);
* residual connections with layer norm, LayerNorm(x + Dropout(Sublayer(x))) (post-LN, section 5.4); the
  pre-LN variant x + Dropout(Sublayer(LayerNorm(x))) (Xiong et al. 2020) is an option;
* input and output embeddings share one matrix, inputs scaled by sqrt(d_model) (section 3.4). As in
  tensor2tensor the shared matrix is initialised with std d_model^-0.5, so scaled inputs have unit size.

The federated use follows the paper notes' [D] line: 2 layers, d_model 128, next-character prediction on
Shakespeare split by speaking role (:mod:`fedloom.data.text`), top-1 next-character accuracy.

Everything is plain tensor math (no in-place state, LayerNorm only), so the vectorized engine's
``torch.func.vmap`` computes exactly what per-client training computes. Dropout is random: keep ``dropout=0``
on the vectorized engine (a model with dropout > 0 falls back to the sequential one,
:func:`fedloom.models.vmap_unsafe_reason`).

Example::

    from fedloom.models import build_model
    m = build_model("transformer", {"layers": 2, "d_model": 128}, (80,), 78)
    m(torch.randint(0, 78, (4, 80))).shape  # (4, 78): logits for the character after each window
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedloom.registry import MODELS


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V (Vaswani et al. eq. 1); ``mask`` is True where attention is allowed."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def causal_mask(t: int, device=None) -> torch.Tensor:
    """[t, t] boolean mask, True on and below the diagonal: position i sees positions j <= i."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)) (section 3.5)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos / div)
    pe[:, 1::2] = torch.cos(pos / div)[:, : d_model // 2]
    return pe.float()


def noam_lr(step: int, d_model: int, warmup: int = 4000) -> float:
    """The paper's learning rate (section 5.3, eq. 3): d_model^-0.5 * min(step^-0.5, step * warmup^-1.5).

    Rises linearly for ``warmup`` steps, then decays as step^-0.5; ``step`` counts from 1. Use it as the
    multiplier of a ``torch.optim.lr_scheduler.LambdaLR`` over an optimizer with base lr 1.
    """
    step = max(int(step), 1)
    return d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


class MultiHeadAttention(nn.Module):
    """h heads of scaled dot-product attention on d_model / h dimensions each, then W^O (section 3.2.2)."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not divisible by heads={heads}")
        self.h, self.d_k = heads, d_model // heads
        self.w_q, self.w_k, self.w_v, self.w_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:  # [b, t, d] -> [b, h, t, d_k]
            return z.view(b, t, self.h, self.d_k).transpose(1, 2)

        o = scaled_dot_product_attention(split(self.w_q(x)), split(self.w_k(x)), split(self.w_v(x)), mask)
        return self.w_o(o.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (section 3.3, eq. 2)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.relu(self.w_1(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention and FFN sublayers, each wrapped in residual + LayerNorm (post- or pre-LN)."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float, pre_ln: bool):
        super().__init__()
        self.attn, self.ffn = MultiHeadAttention(d_model, heads), FeedForward(d_model, d_ff)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.pre_ln = pre_ln

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:  # x + Dropout(Sublayer(LayerNorm(x)))
            x = x + self.drop(self.attn(self.norm1(x), mask))
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask)))  # LayerNorm(x + Dropout(Sublayer(x)))
        return self.norm2(x + self.drop(self.ffn(x)))


class CausalTransformer(nn.Module):
    """Token ids [B, T] -> logits: [B, C] for the last position, or [B, C, T] with ``per_position``.

    With C == vocab_size the output layer is the (tied) embedding matrix: next-token prediction. Otherwise
    (e.g. genre classification) a linear head reads the last position, which has seen the whole window.
    """

    def __init__(self, vocab_size: int, num_classes: int, d_model: int = 128, heads: int = 4, layers: int = 2,
                 d_ff: int = 512, dropout: float = 0.0, pre_ln: bool = False, tie_embeddings: bool = True,
                 per_position: bool = False, max_len: int = 512):
        super().__init__()
        self.d_model, self.per_position = d_model, per_position
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)
        self.register_buffer("pe", sinusoidal_encoding(max_len, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(DecoderLayer(d_model, heads, d_ff, dropout, pre_ln) for _ in range(layers))
        self.final_norm = nn.LayerNorm(d_model) if pre_ln else nn.Identity()
        self.tied = tie_embeddings and num_classes == vocab_size
        self.head = None if self.tied else nn.Linear(d_model, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-1]
        if t > self.pe.shape[0]:
            raise ValueError(f"sequence length {t} exceeds max_len={self.pe.shape[0]}")
        h = self.drop(self.embed(x.long()) * math.sqrt(self.d_model) + self.pe[:t])
        mask = causal_mask(t, x.device)
        for layer in self.layers:
            h = layer(h, mask)
        return self.final_norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if not self.per_position:
            h = h[:, -1]
        logits = h @ self.embed.weight.T if self.tied else self.head(h)
        return logits.transpose(1, 2) if self.per_position else logits


class TransformerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    d_model: int = Field(128, ge=1)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1)
    d_ff: int = Field(512, ge=1, description="inner width of the position-wise FFN (paper: 4 d_model)")
    dropout: float = Field(0.0, ge=0, lt=1, description="residual/embedding dropout (paper 0.1; > 0 is random, "
                           "so the run uses the sequential engine)")
    norm: str = Field("post", pattern="^(post|pre)$", description="'post': LayerNorm(x + sublayer), the paper; 'pre'")
    tie_embeddings: bool = Field(True, description="output layer = input embedding (when predicting tokens)")
    per_position: bool = Field(False, description="logits at every position [B, V, T] (dataset targets='all')")
    vocab_size: int | None = Field(None, ge=2, description="input vocabulary; default: fedloom.data.text's")
    max_len: int = Field(512, ge=1)


@MODELS.register("transformer", TransformerParams, "decoder-only causal Transformer (Vaswani et al. 2017), text")
def transformer(input_shape: tuple[int, ...], num_classes: int, p: TransformerParams) -> nn.Module:
    from fedloom.data.text import VOCAB_SIZE

    if len(input_shape) != 1:
        raise ValueError(f"transformer needs token-id sequences [T], got input shape {input_shape}")
    return CausalTransformer(p.vocab_size or VOCAB_SIZE, num_classes, p.d_model, p.heads, p.layers, p.d_ff,
                             p.dropout, p.norm == "pre", p.tie_embeddings, p.per_position, max(p.max_len, input_shape[0]))

"""Self-attention as a dynamic linear map: the converted form of ``nn.MultiheadAttention``.

Attention ``softmax(q k^T / sqrt(d)) v`` is linear in the values once the attention weights are
fixed.  Here the weights are a decision (:func:`~linearlens.engine.decide`): live in training, frozen
in explanations, so that ``f(x) = W(x) x + r`` holds with the queries and keys acting only through
the decision, as in B-cos ViTs (Böhle et al., successor of the B-cos paper).  The q/k/v and output
projections are converted B-cos linear layers holding the trained weights and biases.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.state import decide
from .layers import ConvertedBcosLinear

__all__ = ["BcosSelfAttention"]


class BcosSelfAttention(nn.Module):
    """Multi-head self-attention with frozen-as-decision attention weights and B-cos projections.

    Built from a trained ``nn.MultiheadAttention`` (packed q/k/v projection, no ``bias_k``/``bias_v``,
    no ``add_zero_attn``); called like it for self-attention (``query is key is value``, no masks).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                "cannot convert nn.MultiheadAttention with separate q/k/v dimensions, bias_k/bias_v or add_zero_attn"
            )
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = e, mha.num_heads, mha.dropout, mha.batch_first
        weights = mha.in_proj_weight.detach().split(e)
        biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.detach().split(e)
        self.q_proj, self.k_proj, self.v_proj = (ConvertedBcosLinear.from_parts(w, b) for w, b in zip(weights, biases))
        self.out_proj = ConvertedBcosLinear.from_parts(mha.out_proj.weight, mha.out_proj.bias)

    def _heads(self, t: Tensor) -> Tensor:
        n, length, _ = t.shape
        return t.view(n, length, self.num_heads, -1).transpose(1, 2)

    def _attention(self, q: Tensor, k: Tensor) -> Tensor:
        scores = self._heads(q) @ self._heads(k).transpose(-1, -2) / math.sqrt(self.embed_dim // self.num_heads)
        return scores.softmax(-1)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if not (query is key is value):
            raise ValueError("BcosSelfAttention supports self-attention only (query, key and value the same tensor)")
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("BcosSelfAttention does not support attention masks")
        x = query if self.batch_first else query.transpose(0, 1)
        n, length, _ = x.shape
        attention = decide(self._attention, self.q_proj(x), self.k_proj(x))
        if self.training and self.dropout > 0:
            attention = F.dropout(attention, self.dropout)
        out = (attention @ self._heads(self.v_proj(x))).transpose(1, 2).reshape(n, length, self.embed_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attention.detach().mean(1) if average_attn_weights else attention.detach()
        return out, weights

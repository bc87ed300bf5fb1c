"""Attention frozen as its weights (the gate), linear in the values.

``softmax(q k^T / sqrt(d)) v`` multiplies two input-dependent tensors.  Read as the linear-interpreter
paper reads every non-linear unit, its decision at ``x0`` is the attention matrix ``A(x0)`` and the
unit is the linear map ``v1 -> A(x0) v1`` on the values (the B-cos ViT reads attention the same way).
These rules give PyTorch's fused paths — ``F.scaled_dot_product_attention`` and the functional form of
``nn.MultiheadAttention`` (which ``nn.TransformerEncoderLayer`` and torchvision's ViT call) — that
interpretation; hand-written attention gets it from the tracer's gate logic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .rules import _BUILTIN, RULES, _arg, register_rule
from .state import Interpretation

__all__ = ["attention_rule", "multi_head_attention_rule"]


def _attention_weights(
    q: Tensor, k: Tensor, mask: Tensor | None, causal: bool, scale: float | None
) -> Tensor:
    """``softmax(q k^T * scale + mask)`` over the keys, as ``scaled_dot_product_attention`` defines it."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return torch.softmax(logits, dim=-1)


@register_rule("scaled_dot_product_attention")
def attention_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Attention frozen as its weights: ``y1 = A(x0) v1`` with ``A = softmax(q0 k0^T / sqrt(d))``.

    The attention weights are the decision (the gate); the values stay linear, so attention is the
    linear map on the values that a B-cos ViT and the linear-interpreter reading of a transformer use.
    """
    q, k, v = args[0], _arg(args, kwargs, 1, "key"), _arg(args, kwargs, 2, "value")
    mask = _arg(args, kwargs, 3, "attn_mask")
    dropout = float(_arg(args, kwargs, 4, "dropout_p", 0.0))
    causal = bool(_arg(args, kwargs, 5, "is_causal", False))
    scale = _arg(args, kwargs, 6, "scale")
    if dropout > 0:
        raise RuntimeError("attention dropout is active (dropout_p > 0); call model.eval() before explaining")
    if bool(kwargs.get("enable_gqa", False)) and k.shape[-3] != q.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, -3), v.repeat_interleave(repeat, -3)
    weights = ctx.decide(lambda qq, kk: _attention_weights(qq, kk, mask, causal, scale), q, k)
    return torch.matmul(weights, v)


@register_rule("multi_head_attention_forward")
def multi_head_attention_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict):
    """``nn.MultiheadAttention`` (the functional form its modules call), weights frozen as in :func:`attention_rule`.

    Inputs are sequence-first ``(L, N, E)``, as ``F.multi_head_attention_forward`` takes them.
    """
    names = (
        "query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
        "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
        "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
        "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal",
    )
    a = {n: _arg(args, kwargs, i, n) for i, n in enumerate(names)}
    if a["training"] and a["dropout_p"]:
        raise RuntimeError("attention dropout is active (training mode); call model.eval() before explaining")
    if a["bias_k"] is not None or a["add_zero_attn"] or a["static_k"] is not None or a["static_v"] is not None:
        raise NotImplementedError("bias_k/bias_v, add_zero_attn and static keys are not supported")
    query, key, value, heads = a["query"], a["key"], a["value"], int(a["num_heads"])
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    tgt, n, embed = query.shape
    head_dim = embed // heads
    if a["use_separate_proj_weight"]:
        ws = (a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"])
    else:
        ws = a["in_proj_weight"].chunk(3)
    bs = (None, None, None) if a["in_proj_bias"] is None else a["in_proj_bias"].chunk(3)
    q, k, v = (F.linear(t, w, b) for t, w, b in zip((query, key, value), ws, bs))

    def heads_first(t: Tensor) -> Tensor:  # (L, N, E) -> (N, heads, L, head_dim)
        return t.reshape(t.shape[0], n, heads, head_dim).permute(1, 2, 0, 3)

    q, k, v = heads_first(q), heads_first(k), heads_first(v)
    mask = _merged_mask(a["attn_mask"], a["key_padding_mask"], n, heads, tgt, k.shape[2], q.dtype)
    causal = bool(a["is_causal"]) and mask is None
    weights = ctx.decide(lambda qq, kk: _attention_weights(qq, kk, mask, causal, None), q, k)
    out = torch.matmul(weights, v).permute(2, 0, 1, 3).reshape(tgt, n, embed)
    out = F.linear(out, a["out_proj_weight"], a["out_proj_bias"])
    if not batched:
        out = out.squeeze(1)
    attn = None
    if a["need_weights"]:
        attn = weights.mean(1) if a["average_attn_weights"] else weights
        if not batched:
            attn = attn.squeeze(0)
    return out, attn


def _merged_mask(
    attn_mask: Tensor | None, padding: Tensor | None, n: int, heads: int, tgt: int, src: int, dtype: torch.dtype
) -> Tensor | None:
    """One additive float mask ``(N, heads, L, S)`` from ``attn_mask`` and ``key_padding_mask`` (or ``None``)."""

    def additive(m: Tensor) -> Tensor:
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    mask = None
    if attn_mask is not None:
        m = additive(attn_mask)
        mask = m.reshape(n, heads, tgt, src) if m.dim() == 3 else m.reshape(1, 1, tgt, src)
    if padding is not None:
        p = additive(padding).reshape(n, 1, 1, src)
        mask = p if mask is None else mask + p
    return mask


_BUILTIN.update(RULES)

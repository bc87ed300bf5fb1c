"""Frozen interpretations of non-linear tensor operations (Fig. 2 of the linear-interpreter paper).

Each rule receives the intercepted function and its arguments and returns the output of the
frozen system, written with :func:`~linearlens.engine.state.decide` so that one definition serves
the live network, the single-batch explanation mode and the two-batch linear interpreter.  Every
rule satisfies Eq. (3): when ``x1 = x0`` the frozen output equals ``h(x0)``.

Rules are data: :data:`RULES` maps an operation name (``"relu"``, ``"max_pool2d"``, ...) to its
rule, and :func:`register_rule` adds or replaces one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .state import Interpretation

__all__ = ["RULES", "register_rule", "Rule"]

Rule = Callable[[Interpretation, Callable, tuple, dict], Any]
RULES: dict[str, Rule] = {}
_BUILTIN: set[str] = set()


def register_rule(*names: str, replace: bool = False) -> Callable[[Rule], Rule]:
    """Register ``rule(state, func, args, kwargs)`` as the frozen interpretation of the operations ``names``.

    A rule receives the active :class:`~linearlens.engine.state.Interpretation` and writes its
    input-dependent factors with ``state.decide(...)``.  Replacing a built-in rule, or one registered
    before, needs ``replace=True``.
    """

    def wrap(rule: Rule) -> Rule:
        taken = [n for n in names if n in RULES]
        if taken and not replace:
            kind = "built-in" if any(n in _BUILTIN for n in taken) else "registered"
            raise ValueError(
                f"a {kind} rule for {', '.join(map(repr, taken))} exists; pass replace=True to replace it"
            )
        for name in names:
            RULES[name] = rule
        return rule

    return wrap


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _finish(x: Tensor, out: Tensor, inplace: bool) -> Tensor:
    # In-place variants must leave their result in ``x`` because callers may keep using ``x``.
    if inplace:
        return x.copy_(out)
    return out


def _is_inplace(func: Callable, kwargs: dict, args: tuple = (), index: int | None = None) -> bool:
    name = getattr(func, "__name__", "")
    if name.endswith("_") and not name.endswith("__") or name.startswith("__i"):
        return True
    if index is not None and len(args) > index:
        return bool(args[index])
    return bool(kwargs.get("inplace", False))


# --- masks: ReLU family -------------------------------------------------------------------------


@register_rule("relu", "relu_")
def relu_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """ReLU frozen as a binary mask ``A(x0) = diag[x0 > 0]``, ``c = 0`` (Fig. 2)."""
    x = args[0]
    mask = ctx.decide(lambda t: (t > 0).to(t.dtype), x)
    return _finish(x, x * mask, _is_inplace(func, kwargs, args, 1))


@register_rule("leaky_relu", "leaky_relu_")
def leaky_relu_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """LeakyReLU frozen as a per-element slope of 1 or ``negative_slope``."""
    x = args[0]
    slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
    # full_like, not a Python scalar: torch.where(cond, 1.0, slope) is float32 and rounds the slope
    gain = ctx.decide(lambda t: torch.where(t > 0, torch.ones_like(t), torch.full_like(t, slope)), x)
    return _finish(x, x * gain, _is_inplace(func, kwargs, args, 2))


@register_rule("prelu")
def prelu_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """PReLU frozen as a per-element slope of 1 or the learnt channel slope."""
    x, weight = args[0], _arg(args, kwargs, 1, "weight")
    shape = [1, -1] + [1] * (x.dim() - 2) if weight.numel() > 1 else [1] * x.dim()
    w = weight.detach().reshape(shape)
    gain = ctx.decide(lambda t: torch.where(t > 0, torch.ones_like(t), w.to(t.dtype)), x)
    return x * gain


@register_rule("hardtanh", "hardtanh_", "relu6")
def hardtanh_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Clipping frozen as a pass-through mask inside the range and a constant outside it."""
    x = args[0]
    if getattr(func, "__name__", "") == "relu6":
        lo, hi, inplace = 0.0, 6.0, bool(_arg(args, kwargs, 1, "inplace", False))
    else:
        lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
        hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
        inplace = _is_inplace(func, kwargs, args, 3)
    return _finish(x, _clip(ctx, x, lo, hi), inplace)


def _clip(ctx: Interpretation, x: Tensor, lo: float | None, hi: float | None) -> Tensor:
    def factors(t: Tensor) -> tuple[Tensor, Tensor]:
        inside = torch.ones_like(t, dtype=torch.bool)
        const = torch.zeros_like(t)
        if lo is not None:
            inside &= t >= lo
            const = torch.where(t < lo, torch.full_like(t, lo), const)
        if hi is not None:
            inside &= t <= hi
            const = torch.where(t > hi, torch.full_like(t, hi), const)
        return inside.to(t.dtype), const

    mask, const = ctx.decide(factors, x)
    return x * mask + const


@register_rule("clamp", "clip", "clamp_", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_")
def clamp_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """``clamp`` with number bounds, frozen like :func:`hardtanh_rule`."""
    name = getattr(func, "__name__", "")
    x = args[0]
    if name.startswith("clamp_min"):
        lo, hi = _arg(args, kwargs, 1, "min"), None
    elif name.startswith("clamp_max"):
        lo, hi = None, _arg(args, kwargs, 1, "max")
    else:
        lo, hi = _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max")
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        raise NotImplementedError("clamp with tensor bounds has no frozen interpretation in linearlens")
    out = _clip(ctx, x, None if lo is None else float(lo), None if hi is None else float(hi))
    return _finish(x, out, name.endswith("_"))


@register_rule("abs", "absolute")
def abs_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """``|x|`` frozen as multiplication by ``sign(x0)``."""
    x = args[0]
    return x * ctx.decide(torch.sign, x)


# --- gains: smooth activations ------------------------------------------------------------------

# h(0) and h'(0) for the gain interpretation at x0 = 0, where h(x0)/x0 is undefined.
_GAIN_AT_ZERO: dict[str, tuple[float, float]] = {
    "sigmoid": (0.5, 0.25),
    "tanh": (0.0, 1.0),
    "silu": (0.0, 0.5),
    "gelu": (0.0, 0.5),
    "elu": (0.0, 1.0),
    "selu": (0.0, 1.0507009873554805),
    "celu": (0.0, 1.0),
    "softplus": (math.log(2.0), 0.5),
    "mish": (0.0, 0.6),
    "hardswish": (0.0, 0.5),
    "hardsigmoid": (0.5, 1.0 / 6.0),
    "logsigmoid": (-math.log(2.0), 0.5),
    "log_sigmoid": (-math.log(2.0), 0.5),  # the name F.logsigmoid reports to the tracer
}


def _gain_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """A smooth activation frozen as a gain: ``A(x0) = h(x0)/x0``, ``c = 0`` (Fig. 2).

    Where ``x0 = 0`` exactly the gain is undefined; there we use ``A = h'(0)`` and ``c = h(0)``,
    which still satisfies Eq. (3).
    """
    x = args[0]
    full_name = getattr(func, "__name__", "")
    _, slope0 = _GAIN_AT_ZERO[full_name.rstrip("_")]
    rest, rest_kwargs = args[1:], {k: v for k, v in kwargs.items() if k != "inplace"}

    def factors(t: Tensor) -> tuple[Tensor, Tensor]:
        # ``t`` shares storage with the activation: an in-place variant must run on a copy.
        value = func(t.clone() if full_name.endswith("_") else t, *rest, **rest_kwargs)
        zero = t == 0
        safe = torch.where(zero, torch.ones_like(t), t)
        gain = torch.where(zero, torch.full_like(t, slope0), value / safe)
        # h(0) from the call itself: it depends on the arguments (softplus with beta != 1, ...)
        const = torch.where(zero, value, torch.zeros_like(t))
        return gain, const

    gain, const = ctx.decide(factors, x)
    return _finish(x, x * gain + const, _is_inplace(func, kwargs))


for _name in _GAIN_AT_ZERO:
    register_rule(_name, _name + "_")(_gain_rule)


# --- selections: max pooling and max --------------------------------------------------------------


def _gather_flat(x: Tensor, indices: Tensor) -> Tensor:
    """Pick, per (sample, channel), the flat spatial positions ``indices`` of ``x``."""
    n, c = indices.shape[:2]
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    picked = flat.gather(2, indices.reshape(n, c, -1))
    return picked.reshape(indices.shape)


def _max_pool_rule(pool_with_indices: Callable, names: tuple[str, ...]) -> Rule:
    def rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict):
        """Max pooling frozen as the selection of the reference maxima (Fig. 2)."""
        x = args[0]
        params = {n: _arg(args, kwargs, i + 1, n) for i, n in enumerate(names)}
        params = {k: v for k, v in params.items() if v is not None}
        # the *_with_indices functions return (values, indices) whatever their return_indices argument
        return_indices = bool(params.pop("return_indices", False)) or func.__name__.endswith("_with_indices")
        indices = ctx.decide(lambda t: pool_with_indices(t, **params, return_indices=True)[1], x)
        out = _gather_flat(x, indices)
        return (out, indices) if return_indices else out

    return rule


_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
for _d, _fn in ((1, F.max_pool1d), (2, F.max_pool2d), (3, F.max_pool3d)):
    register_rule(f"max_pool{_d}d", f"max_pool{_d}d_with_indices")(_max_pool_rule(_fn, _POOL_ARGS))
for _d, _fn in ((1, F.adaptive_max_pool1d), (2, F.adaptive_max_pool2d), (3, F.adaptive_max_pool3d)):
    register_rule(f"adaptive_max_pool{_d}d", f"adaptive_max_pool{_d}d_with_indices")(
        _max_pool_rule(_fn, ("output_size", "return_indices"))
    )


def _argmax_over(t: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, list[int]]:
    """Flat argmax over ``dims`` (moved to the end); returns indices and the permutation used."""
    keep = [d for d in range(t.dim()) if d not in dims]
    perm = keep + list(dims)
    moved = t.permute(perm)
    flat = moved.reshape(*moved.shape[: len(keep)], -1)
    return flat.argmax(-1), perm


@register_rule("max", "amax")
def max_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict):
    """``max``/``amax`` over dimensions frozen as the selection of the reference maximum.

    The elementwise ``max(a, b)`` form is frozen like :func:`maximum_rule`.
    """
    x = args[0]
    name = getattr(func, "__name__", "")
    other = _arg(args, kwargs, 1, "dim" if name == "amax" else "other")
    if isinstance(other, Tensor):
        return maximum_rule(ctx, func, (x, other), {})
    dim = _arg(args, kwargs, 1, "dim")
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        dims = tuple(range(x.dim()))
    elif isinstance(dim, int):
        dims = (dim % x.dim(),)
    else:
        dims = tuple(sorted(d % x.dim() for d in dim))
    if 0 in dims:
        raise NotImplementedError("a max over the batch dimension couples samples and cannot be frozen")
    indices = ctx.decide(lambda t: _argmax_over(t, dims)[0], x)
    _, perm = _argmax_over(x[:1], dims)
    moved = x.permute(perm)
    flat = moved.reshape(*moved.shape[: x.dim() - len(dims)], -1)
    values = flat.gather(-1, indices.unsqueeze(-1)).squeeze(-1)
    if keepdim:
        for d in dims:
            values = values.unsqueeze(d)
    if name == "max" and isinstance(dim, int):
        idx = indices.unsqueeze(dim) if keepdim else indices
        return torch.return_types.max((values, idx))
    return values


@register_rule("maximum", "minimum", "fmax", "fmin")
def maximum_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Elementwise ``max(a, b)`` (e.g. MaxOut) frozen as the selection of the reference winner."""
    a, b = args[0], _arg(args, kwargs, 1, "other")
    take_min = getattr(func, "__name__", "") in ("minimum", "fmin")
    if not isinstance(b, Tensor):
        b = torch.as_tensor(b, dtype=a.dtype, device=a.device)
    if a.dim() < b.dim() or (a.dim() == b.dim() > 0 and a.shape[0] < b.shape[0]):
        # max and min are symmetric: decide on the operand with the batch (``maximum(0, x)``)
        a, b = b, a
    if b.shape[:1] == a.shape[:1] and b.dim() == a.dim():
        pick = ctx.decide(lambda s, t: ((s <= t) if take_min else (s >= t)).to(s.dtype), a, b)
    else:
        bb = b.detach()
        pick = ctx.decide(lambda s: ((s <= bb) if take_min else (s >= bb)).to(s.dtype), a)
    return a * pick + b * (1 - pick)


# --- normalisation with statistics ----------------------------------------------------------------


def _normalise(
    ctx: Interpretation, x: Tensor, reduce_dims: tuple[int, ...], eps: float, unbiased: bool = False
) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the statistics frozen at the reference input.

    With ``centering="frozen"`` (default, Fig. 2) the mean is a decided constant and so enters the
    residual; with ``centering="linear"`` mean subtraction stays a linear map of the probe.
    """
    centering = ctx.centering

    def stats(t: Tensor) -> tuple[Tensor, Tensor]:
        var, mean = torch.var_mean(t, dim=reduce_dims, keepdim=True, unbiased=unbiased)
        return mean, torch.rsqrt(var + eps)

    mean, inv_std = ctx.decide(stats, x)
    if centering == "linear":
        return (x - x.mean(dim=reduce_dims, keepdim=True)) * inv_std
    return (x - mean) * inv_std


def _affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, shape: list[int]) -> Tensor:
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


@register_rule("batch_norm")
def batch_norm_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Batch norm with running statistics is affine; in training mode it couples the batch."""
    running_mean = _arg(args, kwargs, 1, "running_mean")
    training = bool(_arg(args, kwargs, 5, "training", False))
    if training or running_mean is None:
        raise RuntimeError(
            "BatchNorm normalises with batch statistics here (training mode or no running statistics), "
            "which couples the samples of a batch; call model.eval() before explaining or interpreting"
        )
    return func(*args, **kwargs)


@register_rule("instance_norm")
def instance_norm_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Instance norm with frozen per-sample, per-channel statistics (Fig. 2)."""
    x = args[0]
    if not bool(_arg(args, kwargs, 5, "use_input_stats", True)):
        return func(*args, **kwargs)
    weight, bias = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")
    eps = float(_arg(args, kwargs, 7, "eps", 1e-5))
    y = _normalise(ctx, x, tuple(range(2, x.dim())), eps)
    return _affine(y, weight, bias, [1, -1] + [1] * (x.dim() - 2))


@register_rule("group_norm")
def group_norm_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Group norm with frozen per-sample, per-group statistics."""
    x = args[0]
    groups = int(_arg(args, kwargs, 1, "num_groups"))
    weight, bias = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    eps = float(_arg(args, kwargs, 4, "eps", 1e-5))
    grouped = x.reshape(x.shape[0], groups, -1)
    y = _normalise(ctx, grouped, (2,), eps).reshape(x.shape)
    return _affine(y, weight, bias, [1, -1] + [1] * (x.dim() - 2))


@register_rule("layer_norm")
def layer_norm_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Layer norm with frozen per-position statistics over ``normalized_shape``."""
    x = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    weight, bias = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    eps = float(_arg(args, kwargs, 4, "eps", 1e-5))
    y = _normalise(ctx, x, tuple(range(x.dim() - len(shape), x.dim())), eps)
    full = [1] * (x.dim() - len(shape)) + list(shape)
    return _affine(y, weight, bias, full)


@register_rule(
    "dropout", "dropout_", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"
)
def dropout_rule(ctx: Interpretation, func: Callable, args: tuple, kwargs: dict) -> Tensor:
    """Dropout in eval mode is the identity; in training mode it is random and cannot be frozen."""
    x = args[0]
    if bool(_arg(args, kwargs, 2, "training", kwargs.get("train", True))):
        raise RuntimeError("dropout is active (training mode); call model.eval() before explaining")
    return x


_BUILTIN.update(RULES)

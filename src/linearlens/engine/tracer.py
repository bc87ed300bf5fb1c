"""Routing every tensor operation of a network through its frozen interpretation.

:class:`LinearTracer` is a :class:`torch.overrides.TorchFunctionMode`, so it sees functional calls
(``F.relu``, ``torch.sigmoid``, ``x.max(1)``) as well as those made by ``nn.Module``s, in any
control flow: residual additions, concatenations and hand-written ``forward`` methods included.

It tags the tensors that depend on the interpreted input ("carriers") and, for every operation on a
carrier, does one of these:

* affine operations (convolution with a constant kernel, addition, concatenation, reshaping, average
  pooling, interpolation, ...) run unchanged: they are already of the form ``A x1 + c``;
* non-linear operations with a registered rule (:mod:`linearlens.engine.rules`) run their frozen
  interpretation;
* a product of two input-dependent factors is linear once all but one factor are frozen.  A factor
  that comes out of a *gate* — ``sigmoid``, ``hardsigmoid`` or ``softmax`` (squeeze-excitation,
  gated units, attention), or a tensor passed through :func:`gate` — is frozen as a decision, and
  the product stays linear in the other factor.  A product with no gate to freeze (``q @ k^T``,
  ``x * x``) is *non-linear*: it may still feed a gate (attention logits do), but if it reaches a
  linear operation or the output, :class:`UninterpretableOperationError` names the product;
* anything else raises :class:`UninterpretableOperationError` naming the operation, so that no
  explanation is ever silently computed from a system that is not the frozen network.

In-place writes (``y[:, :2] = h``, ``copy_``, ``index_put_``, ``add_``, ``out=`` arguments, writes
through views) tag the tensor written to, and a view of a written tensor is a carrier too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .rules import RULES
from .state import Interpretation, Mode, current_state, interpretation_state

__all__ = [
    "LinearTracer", "UninterpretableOperationError", "linear_interpretation", "run_frozen", "gate", "AFFINE_OPS",
]

_TAG_ATTR = "_linearlens_tag"


class UninterpretableOperationError(RuntimeError):
    """An operation on an input-dependent tensor has no linear or frozen interpretation."""


@dataclass(frozen=True)
class _Tag:
    """What the tracer knows of an input-dependent tensor."""

    token: object
    linear: bool = True  # an affine function of the input (else only a gate may be made of it)
    gate: bool = False  # may be frozen when it multiplies another input-dependent factor
    origin: str = ""  # for a non-linear tensor: the operation that made it so


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


# Operations that are affine in their input-dependent arguments, whatever their number.
AFFINE_OPS = _names(
    "add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__",
    "rsub", "subtract", "neg", "neg_", "__neg__", "negative", "__pos__", "positive",
    "cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack",
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "ravel", "squeeze", "squeeze_",
    "unsqueeze", "unsqueeze_", "permute", "transpose", "transpose_", "t", "movedim", "moveaxis",
    "swapaxes", "swapdims", "contiguous", "clone", "expand", "expand_as", "repeat", "tile",
    "repeat_interleave", "narrow", "select", "index_select", "gather", "take_along_dim", "__getitem__",
    "__setitem__", "chunk", "split", "split_with_sizes", "tensor_split", "unbind", "roll", "flip",
    "fliplr", "flipud", "rot90", "pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d",
    "mean", "sum", "nansum", "cumsum", "diff", "trace", "diagonal", "diag_embed", "tril", "triu",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "unfold", "fold", "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda",
    "copy_", "identity", "masked_fill", "masked_fill_", "where", "index_add", "index_add_", "scatter",
    "scatter_add", "scatter_add_", "index_put", "index_put_", "index_copy", "index_copy_", "real", "__iter__",
    "requires_grad_", "retain_grad", "register_hook", "align_as", "as_strided", "squeeze_copy", "zero_",
    "fill_diagonal_", "stochastic_depth",
)

# Products: affine as long as at most one factor depends on the input (see the module docstring for gates).
PRODUCT_OPS = _names(
    "mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "matmul", "__matmul__", "__rmatmul__",
    "mm", "bmm", "mv", "einsum", "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "outer", "tensordot", "addmm", "baddbmm", "addcmul", "kron",
    "dot", "inner",
)
# Division: affine if the divisor does not depend on the input.
DIVISION_OPS = _names("div", "div_", "__truediv__", "__itruediv__", "true_divide", "divide")

# Operations whose result does not depend on the values of their input.
CONSTANT_OPS = _names(
    "size", "dim", "numel", "ndimension", "nelement", "stride", "is_contiguous", "element_size",
    "data_ptr", "is_floating_point", "is_complex", "__len__", "zeros_like", "ones_like", "empty_like",
    "full_like", "rand_like", "randn_like", "new_zeros", "new_ones", "new_empty", "new_full",
    "new_tensor", "get_device", "__format__", "__repr__", "storage_offset", "untyped_storage",
    "_is_view", "is_set_to", "__hash__", "__bool__",
)

# Gates: their output may be frozen as a decision where it multiplies another input-dependent factor.
GATE_OPS = _names("sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "softmax", "_softmax")

# These take their input-dependent argument out of the system (its gradient or its identity).
_CUTTING_OPS = _names("detach", "detach_", "data", "numpy", "tolist", "item")

# The first argument of these is added to the product, not multiplied.
_ADDED_FIRST = _names("addmm", "baddbmm", "addcmul")


def _op_name(func: Callable) -> str:
    return getattr(func, "__name__", None) or repr(func)


def _is_inplace(name: str, kwargs: dict) -> bool:
    if name == "__setitem__" or name.startswith("__i"):
        return True
    return name.endswith("_") and not name.endswith("__")


def _storage_key(t: Tensor) -> int:
    """The address of the storage behind ``t`` (through ``torch.vmap``'s batched wrappers)."""
    while torch._C._functorch.is_batchedtensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some subclasses)
        return id(t)


def _keep_gate(t: Tensor) -> Tensor:
    """The identity, as the decision that freezes a gate (its value at the reference input)."""
    return t


class LinearTracer(TorchFunctionMode):
    """Run a network as its frozen linear system (see the module docstring).

    The tracer belongs to one :class:`~linearlens.engine.state.Interpretation`; while another one is
    active (a nested interpretation, or a decision being computed) it lets operations through.
    """

    def __init__(self, state: Interpretation | None = None) -> None:
        super().__init__()
        self._token = object()
        self.state = state if state is not None else current_state()
        self._written: dict[int, _Tag] = {}  # storages that received input-dependent values in place
        self._keep: list[Tensor] = []  # their tensors, kept alive so no other tensor reuses the storage

    # --- tags ----------------------------------------------------------------------------------

    def mark(self, x: Tensor) -> Tensor:
        """Declare ``x`` the input of the system: everything computed from it is a carrier."""
        setattr(x, _TAG_ATTR, _Tag(self._token))
        return x

    def _tag(self, x: Any) -> _Tag | None:
        if not isinstance(x, Tensor):
            return None
        tag = getattr(x, _TAG_ATTR, None)
        if tag is not None and tag.token is self._token:
            return tag
        if self._written:
            # A view of a tensor written in place (made before or after the write) shares its storage.
            return self._written.get(_storage_key(x))
        return None

    def is_carrier(self, x: Any) -> bool:
        """True if ``x`` is a tensor that depends on the interpreted input."""
        return self._tag(x) is not None

    def _set(self, out: Any, tag: _Tag) -> Any:
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, Tensor):
                setattr(leaf, _TAG_ATTR, tag)
        return out

    def check_output(self, out: Any) -> Any:
        """Raise if any tensor in ``out`` is an input-dependent tensor that is not linear in the input."""
        for leaf in tree_flatten(out)[0]:
            tag = self._tag(leaf)
            if tag is not None and not tag.linear:
                raise UninterpretableOperationError(
                    f"{tag.origin}, and its result reaches the output without passing through a gate "
                    "(sigmoid, hardsigmoid, softmax or linearlens.engine.gate), so the output is not linear in "
                    "the input"
                )
        return out

    # --- dispatch ------------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        state = self.state
        if current_state() is not state or state.is_deciding:
            return func(*args, **kwargs)
        leaves = tree_flatten((args, kwargs))[0]
        tags = [tag for tag in map(self._tag, leaves) if tag is not None]
        if not tags:
            return func(*args, **kwargs)
        name = _op_name(func)
        if name in CONSTANT_OPS:
            return func(*args, **kwargs)
        if name == "__get__":
            return self._attribute(func, args, kwargs, tags)
        if name in _CUTTING_OPS:
            raise UninterpretableOperationError(
                f"'{name}' takes an input-dependent tensor out of the interpreted system (the network "
                "detaches or reads out an activation), so its frozen linear map cannot be followed; freeze a "
                "factor with linearlens.engine.decide instead"
            )
        target = kwargs.get("out")
        if target is not None:
            # ``out=`` is not differentiable in PyTorch: compute the result, then copy it into ``out``
            # (an in-place copy autograd follows), so the written tensor joins the system.
            result = self.__torch_function__(func, types, args, {k: v for k, v in kwargs.items() if k != "out"})
            for dst, src in zip(tree_flatten(target)[0], tree_flatten(result)[0]):
                dst.copy_(src)
                self._wrote(dst, self._tag(src) or _Tag(self._token))
            return target
        if name in GATE_OPS:
            out, tag = self._gate_op(func, name, args, kwargs, tags)
        elif not all(t.linear for t in tags):
            out, tag = self._on_nonlinear(func, name, args, kwargs, tags)
        else:
            out, tag = self._on_linear(func, name, args, kwargs)
        if _is_inplace(name, kwargs):
            for t in tree_flatten(args[0] if args else None)[0]:
                if isinstance(t, Tensor):
                    self._wrote(t, tag)
        return self._set(out, tag)

    def _wrote(self, t: Tensor, tag: _Tag) -> None:
        """``t`` received input-dependent values in place: it, and every view of its storage, is a carrier."""
        setattr(t, _TAG_ATTR, tag)
        key = _storage_key(t)
        previous = self._written.get(key)
        if previous is not None and previous.linear and not tag.linear:
            tag = _Tag(tag.token, False, False, tag.origin)
        self._written[key] = tag
        self._keep.append(t)

    def _attribute(self, func: Callable, args: tuple, kwargs: dict, tags: list[_Tag]) -> Any:
        # Attribute access such as ``x.shape`` or ``x.T``: carriers stay carriers; ``x.data`` cuts.
        attribute = getattr(getattr(func, "__self__", None), "__name__", "")
        if attribute in _CUTTING_OPS:
            raise UninterpretableOperationError(
                f"'.{attribute}' takes an input-dependent tensor out of the interpreted system, so its "
                "frozen linear map cannot be followed"
            )
        out = func(*args, **kwargs)
        return self._set(out, tags[0]) if isinstance(out, Tensor) else out

    def _gate_op(self, func: Callable, name: str, args: tuple, kwargs: dict, tags: list[_Tag]):
        rule = RULES.get(name)
        if all(t.linear for t in tags) and rule is not None:
            # sigmoid of a linear carrier: its gain interpretation, and a gate if it multiplies a carrier.
            return self._apply_rule(rule, func, name, args, kwargs), _Tag(self._token, True, True)
        # softmax, or a gate on a non-linear tensor: its value only matters once it is frozen.
        return func(*args, **kwargs), _Tag(self._token, False, True, f"'{name}' is not linear in its input")

    def _on_nonlinear(self, func: Callable, name: str, args: tuple, kwargs: dict, tags: list[_Tag]):
        linear = [t for t in tags if t.linear]
        nonlinear = next(t for t in tags if not t.linear)
        if name in PRODUCT_OPS:
            return self._product(func, name, args, kwargs)
        if linear:
            raise UninterpretableOperationError(
                f"{nonlinear.origin}, and '{name}' combines that result with the linear part of the network, "
                "which is not linear in the input (only a gate — sigmoid, hardsigmoid, softmax or "
                "linearlens.engine.gate — may multiply it)"
            )
        # Input-dependent values that can only end up in a gate: computed as they are.
        keep_gate = name in AFFINE_OPS and all(t.gate for t in tags)
        return func(*args, **kwargs), _Tag(self._token, False, keep_gate, nonlinear.origin)

    def _on_linear(self, func: Callable, name: str, args: tuple, kwargs: dict):
        rule = RULES.get(name)
        if rule is not None:
            return self._apply_rule(rule, func, name, args, kwargs), _Tag(self._token)
        if name in AFFINE_OPS:
            out = func(*args, **kwargs)
            if isinstance(out, Tensor) and not (out.is_floating_point() or out.is_complex()):
                raise UninterpretableOperationError(
                    f"'{name}' casts an input-dependent tensor to {out.dtype}, which is not linear in the input"
                )
            tags = [self._tag(t) for t in tree_flatten((args, kwargs))[0]]
            carriers = [t for t in tags if t is not None]
            # A view or copy of a gate is still a gate; a sum of a gate and something else is not.
            return out, _Tag(self._token, True, bool(carriers) and all(t.gate for t in carriers))
        if name in PRODUCT_OPS:
            return self._product(func, name, args, kwargs)
        if name in DIVISION_OPS:
            divisor = args[1] if len(args) > 1 else kwargs.get("other")
            if kwargs.get("rounding_mode") is not None:
                raise UninterpretableOperationError(
                    f"'{name}' with rounding_mode={kwargs['rounding_mode']!r} rounds, which is not linear"
                )
            if self.is_carrier(divisor):
                origin = f"'{name}' divides by an input-dependent tensor, which is not linear in the input"
                return func(*args, **kwargs), _Tag(self._token, False, False, origin)
            return func(*args, **kwargs), _Tag(self._token)
        raise UninterpretableOperationError(
            f"linearlens cannot interpret the operation '{name}' on an input-dependent tensor: it is "
            "neither affine nor has a frozen interpretation. Interpretable non-linear operations: "
            f"{', '.join(sorted(n for n in RULES if not n.endswith('_')))}. Register one with "
            "linearlens.engine.register_rule"
        )

    def _apply_rule(self, rule: Callable, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        try:
            return rule(self.state, func, args, kwargs)
        except NotImplementedError as err:  # a rule that declines this form of its operation
            raise UninterpretableOperationError(f"'{name}': {err}") from err

    def _product(self, func: Callable, name: str, args: tuple, kwargs: dict):
        """A product: linear if at most one factor depends on the input once gates are frozen."""
        if name == "einsum" and len(args) == 2 and isinstance(args[1], (list, tuple)):
            args = (args[0], *args[1])  # einsum(eq, [a, b]) is einsum(eq, a, b)
        first = 1 if name in _ADDED_FIRST else 0
        positions = []  # (is_kwarg, key) of every input-dependent factor, counted once per occurrence
        for i, a in enumerate(args[first:], start=first):
            if self._tag(a) is not None:
                positions.append((False, i))
        for k, v in kwargs.items():
            if self._tag(v) is not None:
                positions.append((True, k))
        factor_tags = [self._tag(kwargs[k] if kw else args[k]) for kw, k in positions]
        added = [self._tag(a) for a in args[:first]]
        if any(t is not None and not t.linear for t in added):
            raise UninterpretableOperationError(
                f"'{name}' adds a non-linear input-dependent tensor to a product ({added[0].origin})"
            )
        if len(positions) <= 1:
            tag = factor_tags[0] if factor_tags else _Tag(self._token)
            # Scaling a gate by a constant keeps it a gate (attention logits scaled by 1/sqrt(d)).
            return func(*args, **kwargs), _Tag(self._token, tag.linear, tag.gate, tag.origin)
        free = [p for p, t in zip(positions, factor_tags) if not t.gate]
        if len(free) == 1 and factor_tags[positions.index(free[0])].linear:
            new_args, new_kwargs = list(args), dict(kwargs)
            for kw, k in positions:
                if (kw, k) == free[0]:
                    continue
                target = new_kwargs if kw else new_args
                target[k] = self.state.decide(_keep_gate, target[k])
            return func(*new_args, **new_kwargs), _Tag(self._token)
        why = "no factor is a gate" if not free or len(free) > 1 else "its only free factor is not linear"
        origin = f"'{name}' multiplies two input-dependent tensors ({why}), which is not linear in the input"
        return func(*args, **kwargs), _Tag(self._token, False, False, origin)


def gate(x: Tensor) -> Tensor:
    """Declare ``x`` a gate: where it multiplies another input-dependent tensor it is frozen at the reference.

    Use it in a model's ``forward`` for a gating factor the tracer cannot recognise by itself (one that
    does not come out of ``sigmoid``, ``hardsigmoid`` or ``softmax``).  Outside an interpretation it
    returns ``x`` unchanged.
    """
    state = current_state()
    if state.mode is Mode.LIVE:
        return x
    tag = getattr(x, _TAG_ATTR, None)
    if tag is None:
        return x
    with torch._C.DisableTorchFunction():
        out = x.view_as(x)
    setattr(out, _TAG_ATTR, _Tag(tag.token, tag.linear, True, tag.origin))
    return out


@contextmanager
def linear_interpretation(
    mode: Mode = Mode.FROZEN, centering: str = "frozen", *, record: list | None = None, replay: list | None = None
) -> Iterator[LinearTracer]:
    """Run code inside as the frozen linear system: a reference pass (FROZEN) or a probe pass (TWO_BATCH).

    Yields the tracer; call ``tracer.mark(x)`` on the tensor that is the system's input before feeding
    it to the network, and ``tracer.check_output(y)`` on what comes out.  Most code wants
    :class:`linearlens.engine.FrozenSystem`, which drives both passes.
    """
    if mode is Mode.LIVE:
        raise ValueError("linear_interpretation needs Mode.FROZEN or Mode.TWO_BATCH")
    with interpretation_state(mode, centering, record=record, replay=replay) as state:
        tracer = LinearTracer(state)
        with tracer:
            yield tracer


def run_frozen(model: Callable[[Tensor], Any], x: Tensor, centering: str = "frozen") -> Any:
    """``model(x)`` evaluated as the frozen system ``F(x) x + r(x)``, differentiable in ``x``."""
    with linear_interpretation(Mode.FROZEN, centering=centering) as tracer:
        return tracer.check_output(model(tracer.mark(x)))

"""Routing every tensor operation of a network through its frozen interpretation.

:class:`LinearTracer` is a :class:`torch.overrides.TorchFunctionMode`, so it sees functional calls
(``F.relu``, ``torch.sigmoid``, ``x.max(1)``) as well as those made by ``nn.Module``s, in any
control flow: residual additions, concatenations and hand-written ``forward`` methods included.

It tracks which tensors depend on the interpreted input ("carriers") and, for every operation on
a carrier, does one of three things:

* affine operations (convolution with a constant kernel, addition, concatenation, reshaping,
  average pooling, interpolation, ...) run unchanged: they are already of the form
  ``A x1 + c``;
* non-linear operations with a registered rule (:mod:`linearlens.engine.rules`) run their frozen
  interpretation;
* anything else raises :class:`UninterpretableOperationError` naming the operation, so that no
  explanation is ever silently computed from a system that is not the frozen network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .rules import RULES
from .state import Mode, interpretation_state, is_deciding

__all__ = ["LinearTracer", "UninterpretableOperationError", "linear_interpretation", "AFFINE_OPS"]

_TAINT_ATTR = "_linearlens_carrier"


class UninterpretableOperationError(RuntimeError):
    """An operation on an input-dependent tensor has no linear or frozen interpretation."""


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
    "adaptive_avg_pool3d", "lp_pool2d_linear", "interpolate", "upsample", "upsample_nearest",
    "upsample_bilinear", "grid_sample_fixed", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "unfold", "fold", "to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda",
    "copy_", "identity", "masked_fill", "masked_fill_", "where", "index_add", "scatter",
    "scatter_add", "index_put", "index_put_", "real", "__iter__", "requires_grad_", "retain_grad",
    "register_hook", "align_as", "__get__", "as_strided", "squeeze_copy",
)

# Products: affine as long as at most one factor depends on the input.
PRODUCT_OPS = _names(
    "mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "matmul", "__matmul__", "__rmatmul__",
    "mm", "bmm", "mv", "einsum", "linear", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "outer", "tensordot", "addmm", "baddbmm", "addcmul", "kron",
    "dot", "inner", "scaled_dot_product_attention",
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

# These take their input-dependent argument out of the system (its gradient or its identity).
_CUTTING_OPS = _names("detach", "detach_", "data", "numpy", "tolist", "item")


def _op_name(func: Callable) -> str:
    return getattr(func, "__name__", None) or repr(func)


def _carriers(tokens: list[Any], token: object) -> list[Tensor]:
    return [t for t in tokens if isinstance(t, Tensor) and getattr(t, _TAINT_ATTR, None) is token]


class LinearTracer(TorchFunctionMode):
    """Run a network as its frozen linear system (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._token = object()

    def mark(self, x: Tensor) -> Tensor:
        """Declare ``x`` the input of the system: everything computed from it is a carrier."""
        setattr(x, _TAINT_ATTR, self._token)
        return x

    def is_carrier(self, x: Any) -> bool:
        """True if ``x`` is a tensor that depends on the interpreted input."""
        return isinstance(x, Tensor) and getattr(x, _TAINT_ATTR, None) is self._token

    def _mark_tree(self, out: Any) -> Any:
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, Tensor):
                setattr(leaf, _TAINT_ATTR, self._token)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if is_deciding():
            return func(*args, **kwargs)
        leaves = tree_flatten((args, kwargs))[0]
        carriers = _carriers(leaves, self._token)
        if not carriers:
            return func(*args, **kwargs)
        name = _op_name(func)
        if name in CONSTANT_OPS:
            return func(*args, **kwargs)
        if name == "__get__":
            # Attribute access such as ``x.shape`` or ``x.T``: carriers stay carriers; ``x.data`` cuts.
            attribute = getattr(getattr(func, "__self__", None), "__name__", "")
            if attribute in _CUTTING_OPS:
                raise UninterpretableOperationError(
                    f"'.{attribute}' takes an input-dependent tensor out of the interpreted system, so its "
                    "frozen linear map cannot be followed"
                )
            out = func(*args, **kwargs)
            return self._mark_tree(out) if isinstance(out, Tensor) else out
        rule = RULES.get(name)
        if rule is not None:
            try:
                return self._mark_tree(rule(func, args, kwargs))
            except NotImplementedError as err:  # a rule that declines this form of its operation
                raise UninterpretableOperationError(f"'{name}': {err}") from err
        if name in AFFINE_OPS:
            out = func(*args, **kwargs)
            if (
                isinstance(out, Tensor)
                and not (out.is_floating_point() or out.is_complex())
                and any(c.is_floating_point() for c in carriers)
            ):
                raise UninterpretableOperationError(
                    f"'{name}' casts an input-dependent tensor to {out.dtype}, which is not linear in the input"
                )
            return self._mark_tree(out)
        if name in PRODUCT_OPS:
            # Count occurrences, not distinct tensors (``x * x`` is quadratic); the first argument of
            # addmm/baddbmm/addcmul is added to the product, not multiplied.
            factors = carriers
            if name in ("addmm", "baddbmm", "addcmul"):
                factors = _carriers(tree_flatten((args[1:], kwargs))[0], self._token)
            if len(factors) > 1:
                raise UninterpretableOperationError(
                    f"'{name}' multiplies two input-dependent tensors, which is not linear in the input. "
                    "Freeze one factor with linearlens.engine.decide(...) or register a rule for it"
                )
            return self._mark_tree(func(*args, **kwargs))
        if name in DIVISION_OPS:
            divisor = args[1] if len(args) > 1 else kwargs.get("other")
            if self.is_carrier(divisor):
                raise UninterpretableOperationError(
                    f"'{name}' divides by an input-dependent tensor, which is not linear in the input"
                )
            if kwargs.get("rounding_mode") is not None:
                raise UninterpretableOperationError(
                    f"'{name}' with rounding_mode={kwargs['rounding_mode']!r} rounds, which is not linear"
                )
            return self._mark_tree(func(*args, **kwargs))
        if name in _CUTTING_OPS:
            raise UninterpretableOperationError(
                f"'{name}' takes an input-dependent tensor out of the interpreted system (the network "
                "detaches or reads out an activation), so its frozen linear map cannot be followed"
            )
        raise UninterpretableOperationError(
            f"linearlens cannot interpret the operation '{name}' on an input-dependent tensor: it is "
            "neither affine nor has a frozen interpretation. Interpretable non-linear operations: "
            f"{', '.join(sorted(n for n in RULES if not n.endswith('_')))}. Register one with "
            "linearlens.engine.register_rule"
        )


@contextmanager
def linear_interpretation(
    mode: Mode, reference_size: int = 0, centering: str = "frozen"
) -> Iterator[LinearTracer]:
    """Run code inside as the frozen linear system, in ``FROZEN`` or ``TWO_BATCH`` mode.

    Yields the tracer; call ``tracer.mark(x)`` on the tensor that is the system's input before
    feeding it to the network.
    """
    if mode is Mode.LIVE:
        raise ValueError("linear_interpretation needs Mode.FROZEN or Mode.TWO_BATCH")
    tracer = LinearTracer()
    with interpretation_state(mode, reference_size, centering), tracer:
        yield tracer


def run_frozen(model: torch.nn.Module, x: Tensor, centering: str = "frozen") -> Tensor:
    """``model(x)`` evaluated as the frozen system ``F(x) x + r(x)``, differentiable in ``x``."""
    with linear_interpretation(Mode.FROZEN, centering=centering) as tracer:
        return model(tracer.mark(x))

"""One call for every explanation method: ``explain(model, x, target, method=...)``.

Methods register themselves with :func:`register_method`; each is a function
``fn(model, x, target, **options) -> Explanation``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..validation import check_input_dtype
from .explanation import Explanation
from .linear import linear_explanation
from .targets import TargetSpec

__all__ = ["explain", "register_method", "list_methods"]

ExplainFn = Callable[..., Explanation]
_METHODS: dict[str, ExplainFn] = {}


def register_method(*names: str) -> Callable[[ExplainFn], ExplainFn]:
    """Register an explanation method under one or more names."""

    def wrap(fn: ExplainFn) -> ExplainFn:
        for name in names:
            if name in _METHODS:
                raise ValueError(f"an explanation method called {name!r} is already registered")
            _METHODS[name] = fn
        return fn

    return wrap


def list_methods() -> list[str]:
    """Names of the registered explanation methods."""
    return sorted(_METHODS)


def explain(model: nn.Module, x: Tensor, target: TargetSpec = None, method: str = "bcos", **options) -> Explanation:
    """Explain ``model``'s outputs ``target`` for the images ``x`` with ``method``.

    ``target`` is a class index, one index per image, an ``(N, K)`` tensor of indices, ``"all"``,
    ``"predicted"`` (default) or :class:`~linearlens.explain.targets.Neuron`\\ (s).  Returns an
    :class:`Explanation` whose ``attributions`` have shape ``(N, K, H, W)``.
    """
    try:
        fn = _METHODS[method]
    except KeyError:
        raise ValueError(f"unknown explanation method {method!r}; available: {', '.join(list_methods())}") from None
    try:
        return fn(model, x, target, **options)
    except RuntimeError:
        check_input_dtype(model, x)  # when the dtypes differ, that is the cause: say so in one line
        raise


@register_method("bcos", "inherent")
def bcos_explanation(model: nn.Module, x: Tensor, target: TargetSpec = None, **options) -> Explanation:
    """The inherent B-cos explanation: rows of ``W(x)`` and contributions, Eqs. (13)-(15) of the B-cos paper."""
    return linear_explanation(model, x, target, method="bcos", **options)


@register_method("linear_rows", "linearscope")
def linear_rows_explanation(model: nn.Module, x: Tensor, target: TargetSpec = None, **options) -> Explanation:
    """Rows of the linear interpreter ``F(x0)`` (Eq. (6) of the linear-interpreter paper) and ``F(x0) ⊙ x0``."""
    return linear_explanation(model, x, target, method="linear_rows", **options)

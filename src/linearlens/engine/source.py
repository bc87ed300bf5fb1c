"""Where the explained input domain begins, and how the system's input is substituted there.

For a B-cos network the explained input is the encoded image ``[r, g, b, 1-r, 1-g, 1-b]``
(Sec. 4 of the B-cos paper): it is with respect to this 6-channel input that ``f(x) = W(x) x``
holds with zero residual.  A module that encodes the raw input subclasses :class:`InputEncoding`;
explanations and linear interpreters then take the output of the first such module as the input
of the linear system, and the raw input otherwise.

The substitution is a context variable read by :class:`InputEncoding` itself, not a hook: the user's
model is never modified, and another thread running the same model is not affected.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["InputEncoding", "find_input_encoding", "substituted_input", "as_leaf"]

# (encoding module, function from the encoding's own output to the tensor that replaces it)
_SUBSTITUTE: contextvars.ContextVar[tuple[nn.Module, Callable[[Tensor], Tensor]] | None] = contextvars.ContextVar(
    "linearlens_substitute", default=None
)


class InputEncoding(nn.Module):
    """Base class of modules whose output is the input domain of the explanations."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = super().__call__(*args, **kwargs)
        active = _SUBSTITUTE.get()
        if active is not None and active[0] is self:
            out = active[1](out)
        return out


def find_input_encoding(model: nn.Module) -> InputEncoding | None:
    """The first :class:`InputEncoding` in ``model`` (in registration order), or ``None``."""
    if not isinstance(model, nn.Module):
        return None  # a plain function has no encoding
    for module in model.modules():
        if isinstance(module, InputEncoding):
            return module
    return None


@contextmanager
def substituted_input(model: nn.Module, replace: Callable[[Tensor], Tensor]) -> Iterator[InputEncoding | None]:
    """Within the block, the output ``e`` of ``model``'s input encoding is replaced by ``replace(e)``.

    Yields the encoding (``None`` if the model has none: then the caller feeds the explained input
    directly).  Only this context sees the substitution.
    """
    encoding = find_input_encoding(model)
    if encoding is None:
        yield None
        return
    token = _SUBSTITUTE.set((encoding, replace))
    try:
        yield encoding
    finally:
        _SUBSTITUTE.reset(token)


def encode(model: nn.Module, x: Tensor) -> Tensor:
    """The explained input for raw inputs ``x``: the encoding's output (detached), or ``x`` itself."""
    encoding = find_input_encoding(model)
    with torch.no_grad():
        token = _SUBSTITUTE.set(None)
        try:
            return (encoding(x) if encoding is not None else x).detach()
        finally:
            _SUBSTITUTE.reset(token)


def as_leaf(x: Tensor) -> Tensor:
    """A fresh leaf tensor with the values of ``x`` that requires grad."""
    with torch.no_grad():
        leaf = x.detach().clone()
    return leaf.requires_grad_(True)


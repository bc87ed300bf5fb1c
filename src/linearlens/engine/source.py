"""Where the explained input domain begins.

For a B-cos network the explained input is the encoded image ``[r, g, b, 1-r, 1-g, 1-b]``
(Sec. 4 of the B-cos paper): it is with respect to this 6-channel input that ``f(x) = W(x) x``
holds with zero residual.  A module that encodes the raw input subclasses :class:`InputEncoding`;
explanations and linear interpreters then take the output of the first such module as the input
of the linear system, and the raw input otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["InputEncoding", "find_input_encoding", "explained_input"]


class InputEncoding(nn.Module):
    """Base class of modules whose output is the input domain of the explanations."""


def find_input_encoding(model: nn.Module) -> InputEncoding | None:
    """The first :class:`InputEncoding` in ``model`` (in registration order), or ``None``."""
    for module in model.modules():
        if isinstance(module, InputEncoding):
            return module
    return None


class _Holder:
    def __init__(self) -> None:
        self.value: Tensor | None = None


@contextmanager
def explained_input(
    model: nn.Module, prepare: Callable[[Tensor], Tensor]
) -> Iterator[Callable[[Tensor], tuple[Tensor, _Holder]]]:
    """Substitute the explained input so that it can be marked and differentiated.

    ``prepare`` turns the explained input into the tensor the system runs on (typically a leaf
    that requires grad, marked as the tracer's input).  Yields a function ``feed(x)`` that returns
    the tensor to pass to ``model`` and a holder whose ``value`` is the explained input once the
    forward pass has run.
    """
    holder = _Holder()
    encoding = find_input_encoding(model)
    handle = None
    if encoding is not None:

        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            if holder.value is None:
                holder.value = prepare(output.detach())
                return holder.value
            return output

        handle = encoding.register_forward_hook(hook)

    def feed(x: Tensor) -> tuple[Tensor, _Holder]:
        holder.value = None
        if encoding is None:
            holder.value = prepare(x.detach())
            return holder.value, holder
        return x.detach(), holder

    try:
        yield feed
    finally:
        if handle is not None:
            handle.remove()


def as_leaf(x: Tensor) -> Tensor:
    """A fresh leaf tensor with the values of ``x`` that requires grad."""
    with torch.no_grad():
        leaf = x.detach().clone()
    return leaf.requires_grad_(True)

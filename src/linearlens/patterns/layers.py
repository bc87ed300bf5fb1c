"""Which modules of a network carry patterns, and their weights with batch norm folded in.

PatternNet and PatternAttribution replace the weights of every linear neuron (Sec. 4.3 of the
PatternNet paper); in a PyTorch network those are the ``nn.Conv2d`` and ``nn.Linear`` modules.  A
batch norm that directly normalises such a layer's output is folded into it first: the neuron is
``y = s (w^T x + b - mu) + beta`` with ``s = gamma / sqrt(var + eps)``, whose weight is ``s w``, and
its regime is decided by that folded pre-activation.  A batch norm that follows anything else is a
neuron with a single input, whose pattern is ``1 / s`` for every estimator (``w^T a = 1``).

Everything else (ReLU masks, max-pool selections, average pooling, residual additions,
concatenations) is a gate or an affine map without learnt weights and is left to the engine's
frozen interpretation.  Modules with learnt parameters of any other type, grouped or non-zero-padded
convolutions, and convolutions or dense products called functionally inside ``forward`` are refused
with :class:`UnsupportedLayerError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..explain.errors import MethodNotApplicableError

__all__ = [
    "PatternLayer", "UnsupportedLayerError", "find_pattern_layers", "folded_weight", "norm_scale", "conv_padding",
    "folded_bias",
]

WEIGHTED = (nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Weighted products that a network could call without a module (and so without a pattern).
_FUNCTIONAL_WEIGHTED = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
    "bilinear", "matmul", "mm", "bmm", "einsum", "addmm", "baddbmm", "tensordot",
})


class UnsupportedLayerError(MethodNotApplicableError):
    """The network has a layer that PatternNet/PatternAttribution cannot give a pattern to (a ``ValueError``)."""


@dataclass(frozen=True)
class PatternLayer:
    """One layer of neurons with patterns: a ``Conv2d``/``Linear`` module (``kind`` ``"conv2d"`` or
    ``"linear"``) with the batch norm ``norm`` folded into it, or a lone batch norm (``"norm"``)."""

    name: str
    kind: str
    norm: str | None = None


def _check_module(name: str, module: nn.Module) -> str | None:
    own = [p for p in module.parameters(recurse=False)]
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"{name} (Conv2d with groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"{name} (Conv2d with padding_mode={module.padding_mode!r})"
        if module.padding == "same" and any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
            return f"{name} (Conv2d with asymmetric 'same' padding)"
        return None
    if isinstance(module, (nn.Linear, *NORMS)) or not own:
        return None
    return f"{name or '<model>'} ({type(module).__name__})"


class _CountWeighted(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in _FUNCTIONAL_WEIGHTED:
            self.calls[name] = self.calls.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@contextmanager
def _hooks(modules: list[tuple[str, nn.Module]], hook) -> Iterator[None]:
    handles = [m.register_forward_hook(lambda mod, inp, out, n=n: hook(n, mod, inp, out)) for n, m in modules]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def find_pattern_layers(model: nn.Module, x: Tensor) -> list[PatternLayer]:
    """The pattern layers of ``model`` in the order it calls them on the batch ``x``.

    Raises :class:`UnsupportedLayerError` for modules with learnt parameters that are not
    ``Conv2d``/``Linear``/``BatchNorm``, for grouped or non-zero-padded convolutions and for
    functional weighted calls that no module accounts for; ``RuntimeError`` for batch norm in
    training mode.
    """
    bad = [b for name, m in model.named_modules() if (b := _check_module(name, m)) is not None]
    if bad:
        raise UnsupportedLayerError(
            f"PatternNet/PatternAttribution have no patterns for {', '.join(bad[:6])}"
            f"{' and more' if len(bad) > 6 else ''}; supported are ReLU networks of Conv2d (groups=1, zero "
            "padding), Linear and BatchNorm layers with parameter-free gates (pooling, additions, concatenation)"
        )
    for name, m in model.named_modules():
        if isinstance(m, NORMS) and (m.training or m.running_mean is None):
            raise RuntimeError(
                f"{name} ({type(m).__name__}) normalises with batch statistics; call model.eval() and use "
                "running statistics before fitting or explaining with patterns"
            )
    watched = [(n, m) for n, m in model.named_modules() if isinstance(m, (*WEIGHTED, *NORMS))]
    producers: dict[int, tuple[str, Tensor]] = {}
    order: list[tuple[str, str | None]] = []  # (module, folded norm) in call order
    calls = {"conv2d": 0, "linear": 0}

    def hook(name: str, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if isinstance(module, WEIGHTED):
            calls["conv2d" if isinstance(module, nn.Conv2d) else "linear"] += 1
            producers[id(output)] = (name, output)  # the tensor is kept so that its id stays unique
            order.append((name, None))
            return
        source = producers.get(id(inputs[0]))
        if source is not None and source[1] is inputs[0]:
            i = order.index((source[0], None))
            order[i] = (source[0], name)
        else:
            order.append((name, "self"))

    counter = _CountWeighted()
    with torch.no_grad(), _hooks(watched, hook), counter:
        model(x)
    extra = {k: v - calls.get(k, 0) for k, v in counter.calls.items() if v > calls.get(k, 0)}
    if extra:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(extra.items()))
        raise UnsupportedLayerError(
            f"the network calls weighted operations outside Conv2d/Linear modules ({ops}); their neurons would "
            "have no patterns. Wrap them in nn.Conv2d / nn.Linear modules"
        )
    kinds = {n: ("conv2d" if isinstance(m, nn.Conv2d) else "linear") for n, m in watched if isinstance(m, WEIGHTED)}
    seen: set[str] = set()
    layers = []
    for name, norm in order:
        if name in seen:
            continue
        seen.add(name)
        layers.append(PatternLayer(name, "norm", None) if norm == "self" else PatternLayer(name, kinds[name], norm))
    return layers


def conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    """The symmetric zero padding of ``module`` as numbers (``"valid"``/``"same"`` resolved)."""
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
    return tuple(module.padding)


def norm_scale(norm: nn.Module) -> tuple[Tensor, Tensor]:
    """``(s, t)`` of a batch norm in eval mode as the affine map ``s x + t`` per channel."""
    s = torch.rsqrt(norm.running_var + norm.eps)
    t = -norm.running_mean * s
    if norm.weight is not None:
        s, t = s * norm.weight, t * norm.weight
    if norm.bias is not None:
        t = t + norm.bias
    return s.detach(), t.detach()


def folded_bias(module: nn.Module, norm: nn.Module | None) -> Tensor:
    """The bias of ``module`` with ``norm`` folded in, ``(O,)`` (zeros when there is none)."""
    w = module.weight.detach()
    b = module.bias.detach() if module.bias is not None else w.new_zeros(w.shape[0])
    if norm is None:
        return b
    s, t = norm_scale(norm)
    return b * s.to(w.dtype) + t.to(w.dtype)


def folded_weight(module: nn.Module, norm: nn.Module | None) -> Tensor:
    """The weight of ``module`` with ``norm`` folded in, in the module's weight layout ``(O, ...)``."""
    w = module.weight.detach()
    if norm is None:
        return w
    s, _ = norm_scale(norm)
    return w * s.to(w.dtype).view(-1, *[1] * (w.dim() - 1))

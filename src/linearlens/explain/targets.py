"""What to explain: classes, several classes, every class, or neurons of intermediate layers."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor, nn

__all__ = ["Neuron", "TargetSpec", "resolve_class_targets", "neuron_readout", "is_neuron_target"]


@dataclass(frozen=True)
class Neuron:
    """A neuron of an intermediate layer: ``layer`` is a name from ``model.named_modules()``.

    ``index`` is a channel (the sum of that channel over all spatial positions is explained, which
    is again a linear function of the input) or a full index ``(channel, h, w)`` / ``(feature,)``
    into the layer's output without its batch dimension.
    """

    layer: str
    index: int | tuple[int, ...]


TargetSpec = Union[int, str, None, Sequence[int], Tensor, Neuron, Sequence[Neuron]]


def is_neuron_target(target: object) -> bool:
    """True for a :class:`Neuron` or a non-empty sequence of them."""
    if isinstance(target, Neuron):
        return True
    return isinstance(target, (list, tuple)) and len(target) > 0 and all(isinstance(t, Neuron) for t in target)


def resolve_class_targets(target: TargetSpec, outputs: Tensor) -> Tensor:
    """Turn a class target specification into an ``(N, K)`` index tensor.

    ``None`` or ``"predicted"``: the top class; ``"all"``: every output (e.g. all classes of a
    multi-label head); an int: that class for every input; a length-``N`` sequence: one class per
    input; an ``(N, K)`` tensor: ``K`` classes per input.
    """
    if outputs.dim() != 2:
        raise ValueError(f"class targets need model outputs of shape (N, classes), got {tuple(outputs.shape)}")
    n, classes = outputs.shape
    if target is None or (isinstance(target, str) and target == "predicted"):
        return outputs.argmax(1, keepdim=True)
    if isinstance(target, str):
        if target == "all":
            return torch.arange(classes, device=outputs.device).expand(n, classes)
        raise ValueError(f"unknown target {target!r}: use an int, a tensor of indices, 'all' or 'predicted'")
    if isinstance(target, bool):
        raise TypeError("target must be a class index, not a bool")
    if isinstance(target, int):
        idx = torch.full((n, 1), target, dtype=torch.long, device=outputs.device)
    else:
        idx = torch.as_tensor(target, device=outputs.device)
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"target indices must be integers, got dtype {idx.dtype}")
        idx = idx.long()
        if idx.dim() == 0:
            idx = idx.expand(n).unsqueeze(1)
        elif idx.dim() == 1:
            if idx.shape[0] != n:
                raise ValueError(f"got {idx.shape[0]} targets for a batch of {n} inputs")
            idx = idx.unsqueeze(1)
        elif idx.dim() != 2 or idx.shape[0] != n:
            raise ValueError(f"targets must have shape (N,) or (N, K) with N = {n}, got {tuple(idx.shape)}")
    if idx.numel() == 0:
        raise ValueError("no targets to explain")
    bad = (idx < 0) | (idx >= classes)
    if bad.any():
        raise ValueError(f"target class {int(idx[bad][0])} is out of range for a model with {classes} outputs")
    return idx


def neuron_readout(model: nn.Module, neurons: Sequence[Neuron]) -> Callable[[nn.Module, Tensor], Tensor]:
    """A readout ``(model, x) -> (N, K)`` that runs ``model`` and returns the selected neuron values.

    The values are read by forward hooks that act only for the call made by the readout itself (a
    context variable), so another thread running the same model is not affected.
    """
    modules = dict(model.named_modules())
    for neuron in neurons:
        if not isinstance(neuron.layer, str) or neuron.layer not in modules:
            names = [n for n in modules if n][:20]
            raise ValueError(f"model has no layer called {neuron.layer!r}; layers include: {', '.join(names)}")
    by_layer: dict[str, list[int]] = {}
    for i, neuron in enumerate(neurons):
        by_layer.setdefault(neuron.layer, []).append(i)

    def readout(net: nn.Module, x: Tensor) -> Tensor:
        slots: list[Tensor | None] = [None] * len(neurons)

        def make_hook(layer: str):
            def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
                if _READING.get() is not slots:
                    return
                if not isinstance(output, Tensor):
                    raise TypeError(f"layer {layer!r} does not return a tensor; it cannot be explained neuron-wise")
                for i in by_layer[layer]:
                    slots[i] = _pick(output, neurons[i])

            return hook

        handles = [modules[layer].register_forward_hook(make_hook(layer)) for layer in by_layer]
        token = _READING.set(slots)
        try:
            net(x)
        finally:
            _READING.reset(token)
            for h in handles:
                h.remove()
        missing = [neurons[i].layer for i, v in enumerate(slots) if v is None]
        if missing:
            raise RuntimeError(f"layer(s) {sorted(set(missing))} were not called during the forward pass")
        return torch.stack(slots, dim=1)  # type: ignore[arg-type]

    return readout


_READING: contextvars.ContextVar[object] = contextvars.ContextVar("linearlens_neuron_reading", default=None)


def _pick(output: Tensor, neuron: Neuron) -> Tensor:
    index = (neuron.index,) if isinstance(neuron.index, int) else tuple(neuron.index)
    shape = tuple(output.shape[1:])
    if len(index) > len(shape) or any(not 0 <= i < s for i, s in zip(index, shape)):
        raise ValueError(f"neuron index {neuron.index} is out of range for layer {neuron.layer!r} of shape {shape}")
    picked = output[(slice(None), *index)]
    return picked.reshape(picked.shape[0], -1).sum(1)

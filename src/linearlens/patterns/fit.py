"""One streaming pass over a data set: per-layer moments and the patterns fitted from them.

Each pattern layer's statistics come from its own input ``x`` and output ``y = w^T x + b`` (batch
norm folded in) as the network computes them on the data, never from labels.  A convolution's rows
are its input patches, one per output location; the products ``X^T G`` the moments need are
computed by the convolution's weight-gradient kernel (``conv2d_weight``), so patches are never
unfolded in memory.  Works on CPU or GPU, on whatever device and dtype the model has.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from .estimators import linear_pattern, two_component_patterns
from .layers import PatternLayer, conv_padding, find_pattern_layers, folded_weight
from .patternset import LayerPatterns, PatternSet
from .statistics import RegimeMoments, batch_moments

__all__ = ["fit_patterns", "layer_moments", "layer_rows", "layer_hooks"]

Sink = Callable[[PatternLayer, nn.Module, Tensor, Tensor], None]


def _images(batch: Any) -> Tensor:
    # (images, labels) batches: only the images are used (patterns are fitted without labels)
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise TypeError("data must yield image tensors (N, C, H, W) or (images, labels) pairs")
    return x


def conv_rows_product(module: nn.Conv2d, x: Tensor, out_shape: torch.Size) -> Callable[[Tensor], Tensor]:
    """``G -> X^T G`` for the patch matrix ``X`` (rows: images x output locations) of ``module`` on ``x``."""
    n, _, h, w = out_shape
    kh, kw = module.kernel_size

    def xt(g: Tensor) -> Tensor:
        k = g.shape[1]
        grad = g.reshape(n, h, w, k).permute(0, 3, 1, 2)
        prod = conv2d_weight(x, (k, x.shape[1], kh, kw), grad, module.stride, conv_padding(module), module.dilation)
        return prod.reshape(k, -1).T

    return xt


def layer_rows(module: nn.Module, y: Tensor) -> Tensor:
    """The outputs of ``module`` as ``(rows, O)``: channels last."""
    if isinstance(module, nn.Conv2d):
        return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


@contextmanager
def layer_hooks(model: nn.Module, layers: list[PatternLayer], sink: Sink) -> Iterator[None]:
    """Call ``sink(layer, module, x, y)`` with each layer's input and (folded) output on every forward pass."""
    modules = dict(model.named_modules())
    pending: dict[int, tuple[Tensor, Tensor]] = {}
    handles = []
    for layer in layers:
        if layer.kind == "norm":
            continue
        module = modules[layer.name]
        if layer.norm is None:
            handles.append(module.register_forward_hook(
                lambda m, inp, out, layer=layer: sink(layer, m, inp[0], out)))
            continue
        handles.append(module.register_forward_hook(
            lambda m, inp, out: pending.__setitem__(id(out), (out, inp[0]))))

        def on_norm(norm, inp, out, layer=layer, module=module):
            stored = pending.pop(id(inp[0]), None)
            if stored is not None and stored[0] is inp[0]:
                sink(layer, module, stored[1], out)

        handles.append(modules[layer.norm].register_forward_hook(on_norm))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        pending.clear()


def layer_moments(
    model: nn.Module, data: Iterable[Any], max_batches: int | None = None
) -> tuple[list[PatternLayer], dict[str, RegimeMoments], int]:
    """Moments of every pattern layer over ``data`` (one pass); returns ``(layers, moments, images)``."""
    moments: dict[str, RegimeMoments] = {}

    def sink(layer: PatternLayer, module: nn.Module, x: Tensor, y: Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            xt = conv_rows_product(module, x, y.shape)
        else:
            xt = x.reshape(-1, x.shape[-1]).T.__matmul__
        ys = layer_rows(module, y)
        batch = batch_moments(ys, ys > 0, xt)
        previous = moments.get(layer.name)
        moments[layer.name] = batch if previous is None else previous.merge(batch)

    batches = iter(data)
    first = next(batches, None)
    if first is None:
        raise ValueError("data yielded no batches: patterns need at least one batch of images")
    device = next((p.device for p in model.parameters()), None)
    layers = find_pattern_layers(model, _images(first).to(device))
    images = 0
    with torch.no_grad(), layer_hooks(model, layers, sink):
        for i, batch in enumerate(itertools.chain([first], batches)):
            if max_batches is not None and i >= max_batches:
                break
            x = _images(batch).to(device)
            model(x)
            images += x.shape[0]
    return layers, moments, images


def fit_patterns(
    model: nn.Module, data: Iterable[Any], *, centre: str = "all", max_batches: int | None = None
) -> PatternSet:
    """Fit the ``S_a`` and ``S_a+-`` patterns of every layer of ``model`` in one pass over ``data``.

    ``data`` yields image batches or ``(images, labels)`` pairs (a ``DataLoader``); labels are never
    used.  ``model`` must be in eval mode.  ``centre`` chooses the two-component numerator (see
    :mod:`linearlens.patterns.estimators`).  Raises :class:`~linearlens.patterns.layers.UnsupportedLayerError`
    for layers without patterns.
    """
    if centre not in ("regime", "all"):
        raise ValueError(f"centre must be 'all' (Eq. (7)) or 'regime', got {centre!r}")
    if model.training:
        raise RuntimeError("fit_patterns needs the model in eval mode (call model.eval()): patterns describe "
                           "the network that will be explained")
    layers, moments, images = layer_moments(model, data, max_batches)
    modules = dict(model.named_modules())
    out: dict[str, LayerPatterns] = {}
    for layer in layers:
        if layer.kind == "norm":
            out[layer.name] = LayerPatterns(layer)
            continue
        m = moments.get(layer.name)
        if m is None:
            raise RuntimeError(f"layer {layer.name!r} was not called while fitting; the network's path depends on data")
        w = folded_weight(modules[layer.name], modules[layer.norm] if layer.norm else None)
        pos, neg = two_component_patterns(m, w, centre)
        out[layer.name] = LayerPatterns(layer, linear_pattern(m), pos, neg)
    samples = {name: m.samples for name, m in moments.items()}
    return PatternSet(out, {"images": images, "rows": samples, "centre": centre})

"""The spatial system the explorer's hover reads rows and columns from.

For an image-to-image network this is the network itself.  A classifier's outputs have no pixels,
so its hover shows the linear interpreter of the network *up to a spatial layer* (by default the
last module with a spatial output, e.g. the class-evidence maps before global pooling of the
CIFAR B-cos network): a row is the receptive filter of one unit of that layer (``W_{1->l}``,
Eq. (14) of the B-cos paper; ``F(x0)^T delta_k``, Eq. (6) of the linear-interpreter paper) and a
column the projective filter of one input pixel onto that layer (``F(x0) delta_k``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LayerOutput", "spatial_layers"]


class LayerOutput(nn.Module):
    """``model`` cut at ``layer``: returns that layer's output for the input of the whole network.

    The whole network runs (a forward hook records the layer's output), so any ``forward`` method
    works unchanged; the frozen rows and columns are then those of the sub-network up to ``layer``.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            names = [n for n in modules if n][:30]
            raise ValueError(f"model has no layer called {layer!r}; layers include: {', '.join(names)}")
        self.model, self.layer_name, self._layer = model, layer, modules[layer]

    def forward(self, x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = self._layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            self.model(x)
        finally:
            handle.remove()
        if not captured or not isinstance(captured[-1], Tensor):
            raise RuntimeError(f"layer {self.layer_name!r} did not return a tensor during the forward pass")
        return captured[-1]


def spatial_layers(model: nn.Module, x: Tensor) -> dict[str, tuple[int, ...]]:
    """Names of the leaf modules whose output is an ``(N, C, h, w)`` map at input ``x``, with ``(C, h, w)``.

    In execution order, so the last one is the deepest spatial layer.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):

            def hook(module, inputs, output, name=name):
                if isinstance(output, Tensor) and output.dim() == 4:
                    shapes.pop(name, None)
                    shapes[name] = tuple(output.shape[1:])

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes

"""Class activation maps of one layer: Grad-CAM and LayerCAM, written on tensors.

Both read the activations ``A`` of a convolutional layer and the gradients ``G = d y_t / d A`` of
the explained output, from one forward pass shared by all ``K`` explained outputs:

* Grad-CAM (Selvaraju et al.): ``ReLU(sum_k mean_hw(G_k) A_k)``;
* LayerCAM (Jiang et al.): ``ReLU(sum_k ReLU(G_k) ⊙ A_k)`` (the chest X-ray paper's baseline).

The coarse map is upsampled to the input size (bilinear).  By default the layer is the last
``nn.Conv2d`` / :class:`~linearlens.layers.BcosConv2d` whose output has more than one spatial
position; as App. B.1 of the B-cos paper notes, such maps explain only the part of the network
after that layer.  ``frozen=True`` takes ``G`` from the frozen linear system.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...engine.system import gradients_of
from ...layers import BcosConv2d
from ..api import register_method
from ..errors import MethodNotApplicableError
from ..explanation import Explanation
from ..targets import TargetSpec
from ._system import prepare

__all__ = ["gradcam", "layercam", "default_cam_layer"]

_CONV_TYPES = (nn.Conv2d, BcosConv2d)


def _spatial(output: object) -> bool:
    return isinstance(output, Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1


def default_cam_layer(model: nn.Module, x: Tensor) -> str:
    """Name of the last convolution (``nn.Conv2d`` or B-cos) called on ``x`` with a spatial output."""
    calls: list[tuple[str, bool]] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: calls.append((name, _spatial(out))))
        for name, m in model.named_modules()
        if isinstance(m, _CONV_TYPES)
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    spatial = [name for name, ok in calls if ok]
    if not spatial:
        raise MethodNotApplicableError("the model has no convolution with a spatial output; pass layer='<module name>'")
    return spatial[-1]


def _cam(
    name: str,
    combine: Callable[[Tensor, Tensor], Tensor],
    model: nn.Module,
    x: Tensor,
    target: TargetSpec,
    layer: str | None,
    relu: bool,
    frozen: bool,
) -> Explanation:
    system, z, targets, outputs = prepare(model, x, target, name, frozen=frozen)
    modules = dict(model.named_modules())
    if layer is None:
        layer = default_cam_layer(model, x)
    elif layer not in modules:
        raise ValueError(f"model has no layer called {layer!r}; layers include: {', '.join(list(modules)[1:20])}")
    captured: list[Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if not isinstance(output, Tensor) or output.dim() != 4:
            raise ValueError(f"{name} needs a layer with (N, C, H, W) output; {layer!r} gives {type(output)}")
        captured.append(output)

    handle = modules[layer].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            scores = system(z.clone().requires_grad_(True))
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(f"layer {layer!r} was called {len(captured)} times in one forward pass; {name} needs one")
    act = captured[0]
    selected = scores.gather(1, targets)
    k = targets.shape[1]
    eye = torch.eye(k, dtype=selected.dtype)
    grads = gradients_of(selected, act, [eye[j].expand_as(selected) for j in range(k)])  # (K, N, C, h, w)
    maps = [combine(act.detach(), grads[j]) for j in range(k)]
    coarse = torch.stack([F.relu(m) if relu else m for m in maps], 1)
    full = F.interpolate(coarse, size=z.shape[-2:], mode="bilinear", align_corners=False)
    return Explanation(
        attributions=full,
        method=name,
        targets=targets,
        outputs=outputs.gather(1, targets),
        inputs=z,
        meta={"layer": layer, "relu": relu, "frozen": frozen, "coarse": coarse},
    )


@register_method("gradcam", "gcam")
def gradcam(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    relu: bool = True,
    frozen: bool = False,
) -> Explanation:
    """Grad-CAM: channel weights are the spatially averaged gradients ('GCam' in Fig. 6 of the B-cos paper)."""
    return _cam(
        "gradcam", lambda a, g: (g.mean((2, 3), keepdim=True) * a).sum(1), model, x, target, layer, relu, frozen
    )


@register_method("layercam")
def layercam(
    model: nn.Module,
    x: Tensor,
    target: TargetSpec = None,
    *,
    layer: str | None = None,
    relu: bool = True,
    frozen: bool = False,
) -> Explanation:
    """LayerCAM: activations weighted element-wise by the positive gradients (Jiang et al., 2021)."""
    return _cam("layercam", lambda a, g: (F.relu(g) * a).sum(1), model, x, target, layer, relu, frozen)

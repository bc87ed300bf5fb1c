"""``to_bcos``: turn a trained torchvision classifier into a B-cos network that computes the same function.

Module replacement (the "B-cosification" idea of Arya et al., 2024, rebuilt here on linearlens's
B-cos layers): every ``nn.Conv2d`` and ``nn.Linear`` becomes a B-cos layer at ``B = 1`` holding the
trained weights with its bias as an accounted term (:mod:`.layers`); ReLU/GELU, max pooling, batch
and layer norm become modules with a coefficient the fine-tuning schedule anneals
(:mod:`.annealed`); ``nn.MultiheadAttention`` becomes attention whose weights are a decision
(:mod:`.attention`).  With all coefficients at 1 and ``B = 1`` the converted network equals the
original; :mod:`.schedule` then raises B to 2 and removes the rest.

The input encoding ``[x, 1 - x]`` (Sec. 4 of the B-cos paper) is added in front of the first
convolution, whose kernel is extended with zeros for the inverse channels: ``[W, 0] [x; 1 - x] = W x``
exactly, including at zero-padded borders (a split such as ``[W/2, -W/2]`` would leave a constant
``-W/2 1`` that zero padding makes position-dependent).  The inverse channels start unused and are
free to be learnt during fine-tuning.  The original network must therefore take images in ``[0, 1]``
(fold any input normalisation into training data, not into the model).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torchvision.models import VGG, ResNet
from torchvision.models.densenet import _DenseBlock, _DenseLayer, _Transition
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vision_transformer import EncoderBlock, MLPBlock

from ..layers import AddInverse
from .annealed import AnnealedActivation, AnnealedBatchNorm2d, AnnealedLayerNorm, AnnealedMaxPool2d
from .attention import BcosSelfAttention
from .families import ADOPTED, adopt
from .layers import ConvertedBcosConv2d, ConvertedBcosLinear

__all__ = ["to_bcos", "UnconvertibleModuleError"]


class UnconvertibleModuleError(TypeError):
    """The model holds modules whose computation ``to_bcos`` does not know."""


_LEAVES: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.Conv2d: ConvertedBcosConv2d,
    nn.Linear: ConvertedBcosLinear,
    NonDynamicallyQuantizableLinear: ConvertedBcosLinear,
    nn.BatchNorm2d: AnnealedBatchNorm2d,
    nn.LayerNorm: AnnealedLayerNorm,
    nn.ReLU: lambda m: AnnealedActivation("relu"),
    nn.GELU: lambda m: AnnealedActivation("gelu", m.approximate),
    nn.MaxPool2d: AnnealedMaxPool2d,
    nn.MultiheadAttention: BcosSelfAttention,
}
# Linear, parameter-free modules that a B-cos network keeps as they are.
_KEPT = (nn.Identity, nn.Dropout, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)
# Modules whose forward only composes their submodules with linear operations (sums, concatenations).
_CONTAINERS = (
    nn.Sequential, nn.ModuleList, nn.ModuleDict, ResNet, BasicBlock, Bottleneck, VGG,
    _DenseBlock, _DenseLayer, _Transition, EncoderBlock, MLPBlock,
)


def _walk(module: nn.Module, prefix: str, containers: tuple[type, ...]) -> Iterable[tuple[str, nn.Module, str]]:
    """``(path, module, role)`` for ``module`` and everything below it, roles: leaf, kept, container."""
    kind = type(module)
    if kind in _LEAVES:
        yield prefix, module, "leaf"
        return
    if kind in _KEPT:
        yield prefix, module, "kept"
        return
    if kind in containers or kind in ADOPTED:
        yield prefix, module, "container"
        for name, child in module.named_children():
            yield from _walk(child, f"{prefix}.{name}" if prefix else name, containers)
        return
    yield prefix, module, "unknown"


def _check(model: nn.Module, containers: tuple[type, ...]) -> list[tuple[str, nn.Module, str]]:
    entries = list(_walk(model, "", containers))
    unknown = [f"'{path or '<model>'}' ({type(m).__name__})" for path, m, role in entries if role == "unknown"]
    if unknown:
        raise UnconvertibleModuleError(
            f"to_bcos cannot convert {', '.join(unknown)}: not a module it knows how to turn into B-cos form "
            f"(known: {', '.join(sorted(t.__name__ for t in _LEAVES))}, linear pooling/dropout/identity, "
            "torchvision VGG/ResNet/DenseNet/ViT blocks); pass containers=(YourModule,) if its forward only "
            "composes its submodules linearly"
        )
    return entries


def _encoded_first_conv(conv: ConvertedBcosConv2d) -> nn.Sequential:
    """``AddInverse`` and the first convolution with zero kernels for the inverse channels (module doc)."""
    if conv.groups != 1:
        raise UnconvertibleModuleError("to_bcos(encoding=True) needs an ungrouped first convolution")
    channels = conv.in_channels
    template = nn.Conv2d(2 * channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, padding_mode=conv.padding_mode, bias=conv.bias is not None)
    with torch.no_grad():
        template = template.to(conv.weight.dtype)
        template.weight.copy_(torch.cat([conv.weight, torch.zeros_like(conv.weight)], dim=1))
        if conv.bias is not None:
            template.bias.copy_(conv.bias)
    encoded = ConvertedBcosConv2d(template, None if conv.logit_bias is None else float(conv.logit_bias))
    return nn.Sequential(AddInverse(channels), encoded)


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def to_bcos(
    model: nn.Module,
    *,
    encoding: bool = True,
    logit_bias: float | None = None,
    containers: Iterable[type] = (),
) -> nn.Module:
    """A B-cos copy of a trained torchvision classifier that computes what ``model`` computes.

    Args:
        model: VGG, ResNet, DenseNet or ViT from ``torchvision.models`` (or a network built from the
            modules listed in :mod:`linearlens.conversion`), any weights, in either train/eval mode.
        encoding: add the ``[x, 1 - x]`` input encoding before the first convolution (module doc).
        logit_bias: the constant the classifier head's bias is annealed to, the ``b`` of Eq. (16);
            default ``log(1 / (K - 1))`` for ``K`` classes, which is App. C's ``log(0.1 / 0.9)`` for
            CIFAR-10.
        containers: extra module types whose ``forward`` only composes their submodules linearly.

    Returns a converted deep copy at ``B = 1`` with every annealing coefficient at 1 (the original is
    untouched).  Raises :class:`UnconvertibleModuleError` naming every module it cannot convert.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_bcos expects an nn.Module, got {type(model).__name__}")
    known = _CONTAINERS + tuple(containers)
    entries = _check(model, known)
    layers = [path for path, m, role in entries if role == "leaf" and type(m) in (nn.Conv2d, nn.Linear)]
    if not layers:
        raise UnconvertibleModuleError("to_bcos found no nn.Conv2d or nn.Linear to convert")
    head = layers[-1]
    head_module = model.get_submodule(head)
    classes = head_module.out_features if isinstance(head_module, nn.Linear) else head_module.out_channels
    if logit_bias is None:
        logit_bias = math.log(1 / (classes - 1)) if classes > 1 else 0.0
    if not math.isfinite(logit_bias):
        raise ValueError(f"logit_bias must be finite, got {logit_bias!r}")

    converted = copy.deepcopy(model)
    first_conv = next((path for path, m, role in entries if type(m) is nn.Conv2d), None)
    for path, module, role in entries:
        if role == "leaf":
            if path == head:
                new = (ConvertedBcosConv2d if type(module) is nn.Conv2d else ConvertedBcosLinear)(
                    converted.get_submodule(path), logit_bias
                )
            else:
                new = _LEAVES[type(module)](converted.get_submodule(path))
            if encoding and path == first_conv:
                new = _encoded_first_conv(new)
            new.train(module.training)
            if path:
                _set(converted, path, new)
            else:
                converted = new
        elif role == "container" and type(module) in ADOPTED:
            adopt(converted.get_submodule(path) if path else converted)
    if encoding and first_conv is None:
        raise UnconvertibleModuleError("to_bcos(encoding=True) needs a first nn.Conv2d to take the encoded input")
    return converted.to(next(model.parameters()).dtype)

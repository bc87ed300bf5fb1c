"""B-cos ResNet-18/34/50 (He et al. 2016; Sec. 3.3 and App. C.1.2 of the B-cos paper, ``s = 100``, ``T = 10``).

The ResNet topology written once over a :class:`~linearlens.models.bcos_factory.BcosLayers` factory:
torchvision's layout (strided 3x3 convolution in the block, 1x1 projection shortcuts, stride on the
bottleneck's 3x3 as in "ResNet v1.5"), with max pooling replaced by average pooling.  The
small-input variants (``*_cifar``) use a 3x3 stride-1 stem without pooling, for 32x32 images.
Downsampling sites: the stem convolution and pooling, the first strided convolution of stages 2-4
and their 1x1 shortcuts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bcos_factory import BcosLayers, finish_model, parse_options
from .registry import register_model

__all__ = ["BcosResNet", "BasicBlock", "Bottleneck"]

_S, _PAPER_T = 100.0, 10.0  # App. C.1.2: s = 100 and log10 T = 1 for ResNets


class BasicBlock(nn.Module):
    """Two 3x3 convolutions plus the (projected) identity."""

    expansion = 1

    def __init__(self, layers: BcosLayers, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        self.conv1 = layers.conv_norm(c_in, c, 3, stride, 1)
        self.conv2 = layers.conv_norm(c, c, 3, 1, 1)
        c_out = c * self.expansion
        self.shortcut = layers.conv_norm(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class Bottleneck(nn.Module):
    """1x1 reduce, strided 3x3, 1x1 expand (x4), plus the (projected) identity."""

    expansion = 4

    def __init__(self, layers: BcosLayers, c_in: int, c: int, stride: int) -> None:
        super().__init__()
        c_out = c * self.expansion
        self.conv1 = layers.conv_norm(c_in, c, 1)
        self.conv2 = layers.conv_norm(c, c, 3, stride, 1)
        self.conv3 = layers.conv_norm(c, c_out, 1)
        self.shortcut = layers.conv_norm(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x)


class BcosResNet(nn.Module):
    """AddInverse, stem, four stages of residual blocks, global average pooling, B-cos linear, ``/T + b``."""

    def __init__(self, layers: BcosLayers, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...],
                 small_input: bool) -> None:
        super().__init__()
        self.encoding = layers.encoding()
        c = layers.channels(64)
        c_enc = 2 * layers.options.in_channels
        if small_input:
            stem = [layers.conv_norm(c_enc, c, 3, 1, 1)]
        else:
            stem = [layers.conv_norm(c_enc, c, 7, 2, 3), layers.avg_pool(3, 2, 1, channels=c)]
        self.stem = nn.Sequential(*stem)
        stages, c_in = [], c
        for i, depth in enumerate(depths):
            width = layers.channels(64 * 2**i)
            blocks = []
            for j in range(depth):
                blocks.append(block(layers, c_in, width, 2 if i > 0 and j == 0 else 1))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.classifier = layers.linear(c_in, layers.options.num_classes)
        self.logits = layers.head()

    def forward(self, x: Tensor) -> Tensor:
        features = self.stages(self.stem(self.encoding(x)))
        return self.logits(self.classifier(torch.mean(features, dim=(2, 3))))


def _build(name: str, block, depths, small_input: bool, kwargs: dict) -> BcosResNet:
    options, family = parse_options(name, kwargs, small_input=small_input, s=_S, paper_temperature=_PAPER_T)
    model = BcosResNet(BcosLayers(options), block, depths, small_input)
    return finish_model(model, name, options, family, 32 if small_input else 224)


@register_model
def bcos_resnet18(**options) -> BcosResNet:
    """B-cos ResNet-18 at 224x224 (options: :class:`~linearlens.models.bcos_factory.BcosOptions`)."""
    return _build("bcos_resnet18", BasicBlock, (2, 2, 2, 2), False, options)


@register_model
def bcos_resnet34(**options) -> BcosResNet:
    """B-cos ResNet-34 at 224x224, the ResNet of Tab. 2 of the B-cos paper."""
    return _build("bcos_resnet34", BasicBlock, (3, 4, 6, 3), False, options)


@register_model
def bcos_resnet50(**options) -> BcosResNet:
    """B-cos ResNet-50 at 224x224 (bottleneck blocks), the chest X-ray paper's backbone."""
    return _build("bcos_resnet50", Bottleneck, (3, 4, 6, 3), False, options)


@register_model
def bcos_resnet18_cifar(**options) -> BcosResNet:
    """B-cos ResNet-18 for 32x32 images (3x3 stride-1 stem, no stem pooling)."""
    return _build("bcos_resnet18_cifar", BasicBlock, (2, 2, 2, 2), True, options)


@register_model
def bcos_resnet34_cifar(**options) -> BcosResNet:
    """B-cos ResNet-34 for 32x32 images."""
    return _build("bcos_resnet34_cifar", BasicBlock, (3, 4, 6, 3), True, options)


@register_model
def bcos_resnet50_cifar(**options) -> BcosResNet:
    """B-cos ResNet-50 for 32x32 images."""
    return _build("bcos_resnet50_cifar", Bottleneck, (3, 4, 6, 3), True, options)

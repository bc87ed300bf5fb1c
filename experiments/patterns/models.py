"""The two conventional ReLU networks of the PatternNet experiments, scaled to CIFAR-10 on a CPU.

``vgg_small``: the VGG recipe of the paper's network (3x3 convolutions, ReLU, max pooling, two dense
layers) at 1/8 of VGG-16's width and depth.  ``resnet_small``: a post-activation ResNet with batch
norm, strided residual stages and a 1x1 projection shortcut, ending in global average pooling.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def vgg_small(classes: int = 10, width: int = 16) -> nn.Sequential:
    """conv-conv-pool, conv-conv-pool, conv-pool, dense-dense (ReLU after every layer but the last)."""
    w = width

    def conv(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.ReLU()]

    return nn.Sequential(
        *conv(3, w), *conv(w, w), nn.MaxPool2d(2),
        *conv(w, 2 * w), *conv(2 * w, 2 * w), nn.MaxPool2d(2),
        *conv(2 * w, 4 * w), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * w * 16, 16 * w), nn.ReLU(), nn.Linear(16 * w, classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers and an identity (or 1x1 conv + BN) shortcut, ReLU after the addition."""

    def __init__(self, i: int, o: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(i, o, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(o)
        self.conv2 = nn.Conv2d(o, o, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(o)
        self.shortcut = nn.Identity()
        if stride != 1 or i != o:
            self.shortcut = nn.Sequential(nn.Conv2d(i, o, 1, stride, bias=False), nn.BatchNorm2d(o))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Stem conv + BN, three residual stages (16, 32, 64 channels), global average pool, linear classifier."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w)
        self.stages = nn.Sequential(BasicBlock(w, w), BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 4 * w, 2))
        self.fc = nn.Linear(4 * w, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(F.relu(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def resnet_small(classes: int = 10, width: int = 16) -> ResNetSmall:
    return ResNetSmall(classes, width)


ARCHITECTURES = {"vgg": vgg_small, "resnet": resnet_small}

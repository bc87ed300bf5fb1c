"""B-cos VGG-11 (Simonyan and Zisserman 2015; Sec. 3.3 and App. C.1.2 of the B-cos paper, ``s = 1000``, ``T = 0.1``).

VGG's configuration "A" over a :class:`~linearlens.models.bcos_factory.BcosLayers` factory: eight
3x3 convolutions, max pooling replaced by 2x2 average pooling (the B-cos paper removes max
pooling), torchvision's 7x7 adaptive pooling and three fully connected layers (dropout dropped:
it is the identity at inference and a B-cos network needs no regulariser to be explained).  The
small-input variant pools to 1x1 and uses 512-wide hidden layers instead of 4096.
Downsampling sites: the five pooling layers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .bcos_factory import BcosLayers, finish_model, parse_options
from .registry import register_model

__all__ = ["BcosVGG", "VGG11"]

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
_S, _PAPER_T = 1000.0, 0.1  # App. C.1.2: s = 1000 and log10 T = -1 for VGG


class BcosVGG(nn.Module):
    """AddInverse, convolutions and pools, adaptive average pooling, three B-cos linear layers, ``/T + b``."""

    def __init__(self, layers: BcosLayers, config: tuple, small_input: bool) -> None:
        super().__init__()
        self.encoding = layers.encoding()
        features, c_in = [], 2 * layers.options.in_channels
        for entry in config:
            if entry == "M":
                features.append(layers.avg_pool(2, 2, channels=c_in))
            else:
                c = layers.channels(entry)
                features.append(layers.conv_norm(c_in, c, 3, 1, 1))
                c_in = c
        self.features = nn.Sequential(*features)
        self.pooled_size = 1 if small_input else 7
        hidden = layers.channels(512 if small_input else 4096)
        self.classifier = nn.Sequential(
            layers.linear(c_in * self.pooled_size**2, hidden),
            layers.linear(hidden, hidden),
            layers.linear(hidden, layers.options.num_classes),
        )
        self.logits = layers.head()

    def forward(self, x: Tensor) -> Tensor:
        features = F.adaptive_avg_pool2d(self.features(self.encoding(x)), self.pooled_size)
        return self.logits(self.classifier(features.flatten(1)))


def _build(name: str, small_input: bool, kwargs: dict) -> BcosVGG:
    options, family = parse_options(name, kwargs, small_input=small_input, s=_S, paper_temperature=_PAPER_T)
    return finish_model(BcosVGG(BcosLayers(options), VGG11, small_input), name, options, family,
                        32 if small_input else 224)


@register_model
def bcos_vgg11(**options) -> BcosVGG:
    """B-cos VGG-11 at 224x224, the VGG of Tab. 2 of the B-cos paper."""
    return _build("bcos_vgg11", False, options)


@register_model
def bcos_vgg11_cifar(**options) -> BcosVGG:
    """B-cos VGG-11 for 32x32 images (1x1 pooled features, 512-wide classifier)."""
    return _build("bcos_vgg11_cifar", True, options)

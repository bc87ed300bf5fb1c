"""B-cos DenseNet-121 (Huang et al. 2017; Sec. 3.3 and App. C.1.2 of the B-cos paper, ``s = 100``, ``T = 1e-3``).

Growth rate 32, blocks of (6, 12, 24, 16) layers, bottleneck width 4 x 32, compression 0.5, over a
:class:`~linearlens.models.bcos_factory.BcosLayers` factory.  torchvision's pre-activation order
(normalise the concatenated features, then convolve) is kept; in the paper design the
normalisations are the identity.  Max pooling in the stem becomes average pooling.  The
small-input variant uses a 3x3 stride-1 stem without pooling.
Downsampling sites: the stem convolution and pooling and the three transitions' pools.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bcos_factory import BcosLayers, finish_model, parse_options
from .registry import register_model

__all__ = ["BcosDenseNet", "DenseLayer", "Transition"]

_S, _PAPER_T = 100.0, 1e-3  # App. C.1.2: s = 100 and log10 T = -3 for DenseNets


class DenseLayer(nn.Module):
    """norm, 1x1 convolution to ``bn_size * growth``, norm, 3x3 convolution to ``growth`` channels."""

    def __init__(self, layers: BcosLayers, c_in: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            layers.norm(c_in), layers.conv(c_in, bn_size * growth, 1),
            layers.norm(bn_size * growth), layers.conv(bn_size * growth, growth, 3, 1, 1),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.block(torch.cat(features, 1))


class DenseBlock(nn.Module):
    """Each layer sees the concatenation of the block input and every earlier layer's output."""

    def __init__(self, layers: BcosLayers, c_in: int, n_layers: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(layers, c_in + i * growth, growth, bn_size) for i in range(n_layers))
        self.out_channels = c_in + n_layers * growth

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """norm, 1x1 convolution (compression), 2x2 average pooling."""

    def __init__(self, layers: BcosLayers, c_in: int, c_out: int) -> None:
        super().__init__(layers.norm(c_in), layers.conv(c_in, c_out, 1), layers.avg_pool(2, 2, channels=c_out))


class BcosDenseNet(nn.Module):
    """AddInverse, stem, dense blocks and transitions, norm, global average pooling, B-cos linear, ``/T + b``."""

    def __init__(self, layers: BcosLayers, block_config: tuple[int, ...], small_input: bool,
                 growth: int = 32, bn_size: int = 4, init_features: int = 64) -> None:
        super().__init__()
        self.encoding = layers.encoding()
        growth, c = layers.channels(growth), layers.channels(init_features)
        c_enc = 2 * layers.options.in_channels
        if small_input:
            stem = [layers.conv(c_enc, c, 3, 1, 1)]
        else:
            stem = [layers.conv(c_enc, c, 7, 2, 3), layers.norm(c), layers.avg_pool(3, 2, 1, channels=c)]
        body = []
        for i, n_layers in enumerate(block_config):
            block = DenseBlock(layers, c, n_layers, growth, bn_size)
            body.append(block)
            c = block.out_channels
            if i < len(block_config) - 1:
                body.append(Transition(layers, c, c // 2))
                c //= 2
        self.features = nn.Sequential(*stem, *body, layers.norm(c))
        self.classifier = layers.linear(c, layers.options.num_classes)
        self.logits = layers.head()

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.classifier(torch.mean(self.features(self.encoding(x)), dim=(2, 3))))


def _build(name: str, small_input: bool, kwargs: dict) -> BcosDenseNet:
    options, family = parse_options(name, kwargs, small_input=small_input, s=_S, paper_temperature=_PAPER_T)
    return finish_model(BcosDenseNet(BcosLayers(options), (6, 12, 24, 16), small_input), name, options, family,
                        32 if small_input else 224)


@register_model
def bcos_densenet121(**options) -> BcosDenseNet:
    """B-cos DenseNet-121 at 224x224, the DenseNet of Tab. 2 of the B-cos paper."""
    return _build("bcos_densenet121", False, options)


@register_model
def bcos_densenet121_cifar(**options) -> BcosDenseNet:
    """B-cos DenseNet-121 for 32x32 images (3x3 stride-1 stem, no stem pooling)."""
    return _build("bcos_densenet121_cifar", True, options)

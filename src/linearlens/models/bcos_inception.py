"""B-cos Inception-v3 (Szegedy et al. 2016; Sec. 3.3 and App. C.1.2 of the B-cos paper, ``s = 200``, ``T = 1``).

torchvision's Inception-v3 layout (modules A-E, 299x299 input) over a
:class:`~linearlens.models.bcos_factory.BcosLayers` factory: every conv-BN-ReLU unit becomes
:meth:`~linearlens.models.bcos_factory.BcosLayers.conv_norm`, the max pools of the stem and of the
reduction modules B and D become 3x3 stride-2 average pools.  The auxiliary classifier (App. C.1.2
trains with it, weight 1) is returned by :meth:`BcosInception3.forward_with_aux` only, so that
``forward`` is always the single-output network that is explained.  The small-input variant drops
the stem's strides and pools (32x32 images reach module A at 28x28).
Downsampling sites: stem convolution 1a and the two stem pools, the strided 3x3 convolutions and
pools of modules B (Mixed_6a) and D (Mixed_7a), and the auxiliary head's 5x5 stride-3 pool.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .bcos_factory import BcosLayers, finish_model, parse_options
from .registry import register_model

__all__ = ["BcosInception3"]

_S, _PAPER_T = 200.0, 1.0  # App. C.1.2: s = 200 and log10 T = 0 for the InceptionNet


class _Branches(nn.Module):
    """Runs parallel branches on one input and concatenates their outputs along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([branch(x) for branch in self.branches], 1)


class _Split(nn.Module):
    """Module E's split: a 1x3 and a 3x1 convolution on the same input, concatenated."""

    def __init__(self, layers: BcosLayers, c_in: int, c: int) -> None:
        super().__init__()
        self.wide = layers.conv_norm(c_in, c, (1, 3), 1, (0, 1))
        self.tall = layers.conv_norm(c_in, c, (3, 1), 1, (1, 0))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.wide(x), self.tall(x)], 1)


def _chain(layers: BcosLayers, c_in: int, specs: list[tuple]) -> tuple[nn.Sequential, int]:
    """conv_norm units from ``(channels, kernel, stride, padding)`` specs; returns the chain and its width."""
    units = []
    for c, k, s, p in specs:
        c = layers.channels(c)
        units.append(layers.conv_norm(c_in, c, k, s, p))
        c_in = c
    return nn.Sequential(*units), c_in


def _pool_branch(layers: BcosLayers, c_in: int, c: int) -> tuple[nn.Sequential, int]:
    conv, c_out = _chain(layers, c_in, [(c, 1, 1, 0)])
    return nn.Sequential(nn.AvgPool2d(3, 1, 1), conv), c_out


def inception_a(layers: BcosLayers, c_in: int, pool_features: int) -> tuple[nn.Module, int]:
    b1, c1 = _chain(layers, c_in, [(64, 1, 1, 0)])
    b5, c5 = _chain(layers, c_in, [(48, 1, 1, 0), (64, 5, 1, 2)])
    b3, c3 = _chain(layers, c_in, [(64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)])
    bp, cp = _pool_branch(layers, c_in, pool_features)
    return _Branches(b1, b5, b3, bp), c1 + c5 + c3 + cp


def inception_b(layers: BcosLayers, c_in: int) -> tuple[nn.Module, int]:
    b3, c3 = _chain(layers, c_in, [(384, 3, 2, 0)])
    bd, cd = _chain(layers, c_in, [(64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 2, 0)])
    return _Branches(b3, bd, layers.avg_pool(3, 2, channels=c_in)), c3 + cd + c_in


def inception_c(layers: BcosLayers, c_in: int, c7: int) -> tuple[nn.Module, int]:
    b1, c1 = _chain(layers, c_in, [(192, 1, 1, 0)])
    b7, c7a = _chain(layers, c_in, [(c7, 1, 1, 0), (c7, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0))])
    bd, cd = _chain(layers, c_in, [(c7, 1, 1, 0), (c7, (7, 1), 1, (3, 0)), (c7, (1, 7), 1, (0, 3)),
                                   (c7, (7, 1), 1, (3, 0)), (192, (1, 7), 1, (0, 3))])
    bp, cp = _pool_branch(layers, c_in, 192)
    return _Branches(b1, b7, bd, bp), c1 + c7a + cd + cp


def inception_d(layers: BcosLayers, c_in: int) -> tuple[nn.Module, int]:
    b3, c3 = _chain(layers, c_in, [(192, 1, 1, 0), (320, 3, 2, 0)])
    b7, c7 = _chain(layers, c_in, [(192, 1, 1, 0), (192, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0)),
                                   (192, 3, 2, 0)])
    return _Branches(b3, b7, layers.avg_pool(3, 2, channels=c_in)), c3 + c7 + c_in


def inception_e(layers: BcosLayers, c_in: int) -> tuple[nn.Module, int]:
    b1, c1 = _chain(layers, c_in, [(320, 1, 1, 0)])
    r3, c3 = _chain(layers, c_in, [(384, 1, 1, 0)])
    b3 = nn.Sequential(r3, _Split(layers, c3, c3))
    rd, cd = _chain(layers, c_in, [(448, 1, 1, 0), (384, 3, 1, 1)])
    bd = nn.Sequential(rd, _Split(layers, cd, cd))
    bp, cp = _pool_branch(layers, c_in, 192)
    return _Branches(b1, b3, bd, bp), c1 + 2 * c3 + 2 * cd + cp


class BcosInception3(nn.Module):
    """AddInverse, stem, modules 5b-7c, global average pooling, B-cos linear, ``/T + b``."""

    def __init__(self, layers: BcosLayers, small_input: bool, aux_logits: bool) -> None:
        super().__init__()
        self.encoding = layers.encoding()
        s = 1 if small_input else 2
        stem1, c = _chain(layers, 2 * layers.options.in_channels, [(32, 3, s, 0), (32, 3, 1, 0), (64, 3, 1, 1)])
        stem2, c2 = _chain(layers, c, [(80, 1, 1, 0), (192, 3, 1, 0)])
        pools = [] if small_input else [layers.avg_pool(3, 2, channels=c)]
        self.stem = nn.Sequential(stem1, *pools, stem2, *([] if small_input else [layers.avg_pool(3, 2, channels=c2)]))
        mixed6, c = [], c2
        for build, args in ((inception_a, (32,)), (inception_a, (64,)), (inception_a, (64,)), (inception_b, ()),
                            (inception_c, (128,)), (inception_c, (160,)), (inception_c, (160,)),
                            (inception_c, (192,))):
            module, c = build(layers, c, *(layers.channels(a) for a in args))
            mixed6.append(module)
        self.mixed6 = nn.Sequential(*mixed6)
        self.aux = _AuxHead(layers, c) if aux_logits else None
        d, c = inception_d(layers, c)
        e1, c = inception_e(layers, c)
        e2, c = inception_e(layers, c)
        self.mixed7 = nn.Sequential(d, e1, e2)
        self.classifier = layers.linear(c, layers.options.num_classes)
        self.logits = layers.head()

    def _main(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mid = self.mixed6(self.stem(self.encoding(x)))
        return self.logits(self.classifier(torch.mean(self.mixed7(mid), dim=(2, 3)))), mid

    def forward(self, x: Tensor) -> Tensor:
        return self._main(x)[0]

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, auxiliary logits)`` for training with the auxiliary loss (App. C.1.2)."""
        if self.aux is None:
            raise ValueError("this model was built with aux_logits=False")
        logits, mid = self._main(x)
        return logits, self.aux(mid)


class _AuxHead(nn.Module):
    """5x5 stride-3 pool, 1x1 conv to 128, 5x5 conv to 768, global pooling, B-cos linear, ``/T + b``.

    The 5x5 pool and convolution are padded by 2 (torchvision pads neither), so that the head works
    at every input size down to the small-input variant's 32x32.
    """

    def __init__(self, layers: BcosLayers, c_in: int) -> None:
        super().__init__()
        body, c = _chain(layers, c_in, [(128, 1, 1, 0), (768, 5, 1, 2)])
        self.features = nn.Sequential(layers.avg_pool(5, 3, 2, channels=c_in), body)
        self.classifier = layers.linear(c, layers.options.num_classes)
        self.logits = layers.head()

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.classifier(torch.mean(self.features(x), dim=(2, 3))))


def _build(name: str, small_input: bool, kwargs: dict) -> BcosInception3:
    options, family = parse_options(name, kwargs, small_input=small_input, s=_S, paper_temperature=_PAPER_T,
                                    extra={"aux_logits": True})
    if not isinstance(family["aux_logits"], bool):
        raise ValueError(f"{name}: aux_logits must be True or False, got {family['aux_logits']!r}")
    model = BcosInception3(BcosLayers(options), small_input, family["aux_logits"])
    return finish_model(model, name, options, family, 32 if small_input else 299)


@register_model
def bcos_inception_v3(**options) -> BcosInception3:
    """B-cos Inception-v3 at 299x299 (App. C.1.2); extra option ``aux_logits`` (default True)."""
    return _build("bcos_inception_v3", False, options)


@register_model
def bcos_inception_v3_cifar(**options) -> BcosInception3:
    """B-cos Inception-v3 for 32x32 images (no stem strides or pools)."""
    return _build("bcos_inception_v3_cifar", True, options)

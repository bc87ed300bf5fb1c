"""The layer factory every B-cos architecture family is built from (Sec. 3.3 and App. C.1.2 of the B-cos paper).

A family module (``bcos_resnet``, ``bcos_vgg``, ...) writes its architecture once, in terms of a
:class:`BcosLayers` object that decides what a convolution, a normalisation, a pooling site or a
fully connected layer *is*: B-cos units with or without MaxOut, the output scale
``gamma = s / sqrt(d)``, normalisation removed (the paper) or uncentred and bias-free (the
successor design), and strided sites replaced by a stride-1 layer and an anti-aliasing pool (Fig. 2
of the chest X-ray paper).  Two designs:

``design="paper"``
    App. C.1.2: every convolution / linear layer a B-cos unit with two MaxOut units, ReLU, max
    pooling and batch norm removed (max pooling becomes average pooling), ``gamma = s / sqrt(d)``
    with the family's ``s``, output divided by the family's temperature ``T``.
``design="v2"``
    the successor design (the ``bcos`` package): no MaxOut, :class:`UncenteredBatchNorm2d` after
    every convolution, the same ``gamma``, ``T = 1``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from ..layers import AddInverse, BcosConv2d, BcosLinear, LogitLayer
from ..layers.antialias import ANTIALIAS_KINDS, downsample
from ..layers.norm import UncenteredBatchNorm2d, UncenteredLayerNorm

__all__ = ["BcosOptions", "BcosLayers", "parse_options", "finish_model", "DESIGNS", "CIFAR_LOGIT_BIAS",
           "IMAGENET_LOGIT_BIAS"]

DESIGNS = ("paper", "v2")
# App. C: b = log(p / (1 - p)) makes a zero input predict probability p per class.
CIFAR_LOGIT_BIAS = math.log(0.1 / 0.9)
IMAGENET_LOGIT_BIAS = math.log(0.01 / 0.99)


@dataclass
class BcosOptions:
    """The options every family accepts (``None`` = the design's / family's default).

    ``max_out`` defaults to 2 (paper) or 1 (v2); ``scale`` is ``s`` in ``gamma = s / sqrt(d)``;
    ``temperature`` defaults to the family's App. C.1.2 value (paper) or 1 (v2); ``logit_bias`` to
    App. C's ``log(0.1/0.9)`` for the small-input (CIFAR) variants and ``log(0.01/0.99)`` for the
    standard ones.  ``num_classes`` defaults to 10 (small-input) or 1000.  ``multi_label`` marks a
    head whose outputs are independent sigmoids (trained with BCE on multi-hot targets); the
    network itself is the same.  ``antialias`` is ``"blurpool"``, ``"flc"`` or ``None``;
    ``blur_size`` the BlurPool filter size.
    """

    design: str = "v2"
    b: float = 2.0
    max_out: int | None = None
    width: float = 1.0
    antialias: str | None = None
    blur_size: int = 3
    num_classes: int | None = None
    multi_label: bool = False
    logit_bias: float | None = None
    temperature: float | None = None
    scale: float | None = None
    in_channels: int = 3


def _unknown_error(model_name: str, unknown: list[str], known: list[str]) -> TypeError:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return TypeError(f"{model_name} got unknown option(s) {', '.join(hints)}; accepted: {', '.join(known)}")


def parse_options(
    model_name: str,
    kwargs: dict[str, Any],
    *,
    small_input: bool,
    s: float,
    paper_temperature: float,
    extra: dict[str, Any] | None = None,
) -> tuple[BcosOptions, dict[str, Any]]:
    """Resolved :class:`BcosOptions` and family-specific options (``extra``: name -> default).

    Raises a one-line ``TypeError`` naming the closest accepted option for a misspelt one and a
    ``ValueError`` for a bad value.
    """
    extra = dict(extra or {})
    known = [f.name for f in fields(BcosOptions)] + list(extra)
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise _unknown_error(model_name, unknown, known)
    family = {k: kwargs.get(k, v) for k, v in extra.items()}
    opts = BcosOptions(**{k: v for k, v in kwargs.items() if k not in extra})
    if opts.design not in DESIGNS:
        raise ValueError(f"{model_name}: design must be one of {DESIGNS}, got {opts.design!r}")
    if opts.antialias not in (*ANTIALIAS_KINDS, None):
        raise ValueError(f"{model_name}: antialias must be one of {ANTIALIAS_KINDS} or None, got {opts.antialias!r}")
    if not isinstance(opts.width, (int, float)) or not opts.width > 0 or not math.isfinite(opts.width):
        raise ValueError(f"{model_name}: width must be a finite number > 0, got {opts.width!r}")
    if opts.num_classes is not None and (not isinstance(opts.num_classes, int) or opts.num_classes < 1):
        raise ValueError(f"{model_name}: num_classes must be a positive int, got {opts.num_classes!r}")
    if not isinstance(opts.multi_label, bool):
        raise ValueError(f"{model_name}: multi_label must be True or False, got {opts.multi_label!r}")
    if not isinstance(opts.blur_size, int) or opts.blur_size < 1:
        raise ValueError(f"{model_name}: blur_size must be an int >= 1, got {opts.blur_size!r}")
    if not isinstance(opts.in_channels, int) or opts.in_channels < 1:
        raise ValueError(f"{model_name}: in_channels must be a positive int, got {opts.in_channels!r}")
    paper = opts.design == "paper"
    opts.max_out = (2 if paper else 1) if opts.max_out is None else opts.max_out
    opts.scale = s if opts.scale is None else opts.scale
    opts.temperature = (paper_temperature if paper else 1.0) if opts.temperature is None else opts.temperature
    opts.num_classes = (10 if small_input else 1000) if opts.num_classes is None else opts.num_classes
    if opts.logit_bias is None:
        opts.logit_bias = CIFAR_LOGIT_BIAS if small_input else IMAGENET_LOGIT_BIAS
    return opts, family


class BcosLayers:
    """Makes the layers of one network from its :class:`BcosOptions` (see the module docstring)."""

    def __init__(self, options: BcosOptions) -> None:
        self.options = options
        self.paper = options.design == "paper"

    def channels(self, n: int) -> int:
        """``n`` channels scaled by the width multiplier (at least 1)."""
        return max(1, round(n * self.options.width))

    def encoding(self) -> AddInverse:
        """The ``[x, 1 - x]`` input encoding every B-cos model starts with (App. D.2)."""
        return AddInverse(self.options.in_channels)

    def conv(self, c_in: int, c_out: int, kernel_size, stride: int = 1, padding=0, groups: int = 1) -> nn.Module:
        """A B-cos convolution; with anti-aliasing a strided one becomes stride 1 plus the pool (Fig. 2)."""
        o = self.options
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        gamma = o.scale / math.sqrt(k[0] * k[1] * c_in / groups)  # App. C.1.2, d = k^2 c
        aliased = o.antialias is not None and stride > 1
        conv = BcosConv2d(c_in, c_out, k, 1 if aliased else stride, padding, groups=groups, b=o.b,
                          max_out=o.max_out, scale=gamma)
        return nn.Sequential(conv, downsample(o.antialias, c_out, stride, o.blur_size)) if aliased else conv

    def norm(self, channels: int) -> nn.Module:
        """Uncentred bias-free batch norm (v2) or nothing (the paper removes normalisation)."""
        return nn.Identity() if self.paper else UncenteredBatchNorm2d(channels)

    def conv_norm(self, c_in: int, c_out: int, kernel_size, stride: int = 1, padding=0) -> nn.Sequential:
        """:meth:`conv` followed by :meth:`norm`: a conventional network's conv-BN-ReLU unit."""
        return nn.Sequential(self.conv(c_in, c_out, kernel_size, stride, padding), self.norm(c_out))

    def avg_pool(self, kernel_size: int, stride: int, padding: int = 0, channels: int | None = None) -> nn.Module:
        """Average pooling (the paper's replacement for max pooling); anti-aliased: stride 1, then the pool."""
        o = self.options
        if o.antialias is None or stride == 1:
            return nn.AvgPool2d(kernel_size, stride, padding)
        if o.antialias == "blurpool" and channels is None:
            raise ValueError("an anti-aliased average pool with BlurPool needs the number of channels")
        return nn.Sequential(
            nn.AvgPool2d(kernel_size, 1, padding), downsample(o.antialias, channels or 1, stride, o.blur_size)
        )

    def linear(self, in_features: int, out_features: int) -> BcosLinear:
        """A fully connected B-cos layer with ``gamma = s / sqrt(in_features)``."""
        o = self.options
        return BcosLinear(in_features, out_features, b=o.b, max_out=o.max_out,
                          scale=o.scale / math.sqrt(in_features))

    def layer_norm(self, dim: int) -> nn.Module:
        """Per-token uncentred layer norm with a decided scale (v2) or nothing (paper)."""
        return nn.Identity() if self.paper else UncenteredLayerNorm(dim)

    def head(self) -> LogitLayer:
        """``y = x / T + b`` (App. C)."""
        return LogitLayer(self.options.temperature, self.options.logit_bias)


def finish_model(model: nn.Module, name: str, options: BcosOptions, family: dict, input_size: int) -> nn.Module:
    """Record the registered name, the resolved options and the standard input size on ``model``."""
    model.model_name = name
    model.model_args = {**asdict(options), **family}
    model.default_input_size = input_size
    model.multi_label = options.multi_label
    model.num_classes = options.num_classes
    return model

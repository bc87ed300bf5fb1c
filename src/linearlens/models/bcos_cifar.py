"""The 9-layer convolutional B-cos network for CIFAR-10 (Sec. 4 and App. C.1.1 of the B-cos paper)."""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
from torch import Tensor, nn

from ..layers import AddInverse, BcosConv2d, LogitLayer
from .registry import register_model

__all__ = ["BcosCifarNet", "BcosCifarConfig", "cifar_gamma", "cifar_temperature", "bcos_cifar"]

# App. C.1.1: kernel sizes, strides, paddings and output channels of the nine layers.
KERNELS = (3, 3, 3, 3, 3, 3, 3, 3, 1)
STRIDES = (1, 1, 2, 1, 1, 2, 1, 1, 1)
PADDINGS = (1, 1, 1, 1, 1, 1, 1, 1, 0)
CHANNELS = (64, 64, 128, 128, 128, 256, 256, 256)

# App. C.1.1: log10 T for B = 1, 1.25, ..., 2.5.
_TEMPERATURE_B = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)
_TEMPERATURE_LOG10 = (-3.0, -3.0, -2.0, 1.0, 2.0, 2.0, 3.0)


def cifar_gamma(b: float) -> float:
    """The fixed layer output scale of App. C.1.1: ``log10 gamma = 1.5 B - 1.75``."""
    return 10 ** (1.5 * b - 1.75)


def cifar_temperature(b: float) -> float:
    """The output temperature T of App. C.1.1, interpolated in log10 between the listed B values."""
    if not _TEMPERATURE_B[0] <= b <= _TEMPERATURE_B[-1]:
        raise ValueError(
            f"App. C.1.1 lists temperatures for 1 <= B <= 2.5 only (got B = {b}); pass temperature= explicitly"
        )
    return float(10 ** np.interp(b, _TEMPERATURE_B, _TEMPERATURE_LOG10))


@dataclass
class BcosCifarConfig:
    """Everything that defines a :class:`BcosCifarNet`; stored as JSON next to checkpoints.

    ``width_scaled_gamma`` adapts App. C.1.1's per-layer scale to narrow networks.  A B-cos unit's
    output is about ``gamma * ||patch|| * |cos|^B`` and a random direction has ``|cos| ~ d^(-1/2)``
    for fan-in ``d``, so a layer's gain goes as ``gamma * d^((1-B)/2)``.  Narrowing a network by
    ``width`` therefore multiplies every layer's gain by ``width^((1-B)/2)``: about 16x over the
    network at width 0.5 and B = 2, enough to make BCE training diverge.  With the flag set, each
    layer uses ``gamma * (d_narrow / d_full)^((B-1)/2)``, which keeps the full-width network's signal
    scale (the same rule as App. C.1.2's ``gamma = s / sqrt(d)`` for B = 2).  It changes nothing at
    width 1.  A B-cos network is 1-homogeneous, so this only rescales the logits, like T does.
    """

    b: float = 2.0
    max_out: int = 2
    width: float = 1.0
    num_classes: int = 10
    gamma: float | None = None
    temperature: float | None = None
    logit_bias: float = field(default_factory=lambda: math.log(0.1 / 0.9))
    in_channels: int = 3
    width_scaled_gamma: bool = False

    def resolved(self) -> BcosCifarConfig:
        """A copy with gamma and temperature filled in from App. C.1.1 where they were left unset."""
        return BcosCifarConfig(
            **{
                **asdict(self),
                "gamma": cifar_gamma(self.b) if self.gamma is None else self.gamma,
                "temperature": cifar_temperature(self.b) if self.temperature is None else self.temperature,
            }
        )


def _config_from(kwargs: dict) -> BcosCifarConfig:
    """A :class:`BcosCifarConfig` from keyword arguments, naming the closest field for a misspelt one."""
    known = [f.name for f in fields(BcosCifarConfig)]
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        hints = []
        for name in unknown:
            # v1 B-cos code calls the fixed output scale gamma ``scale_fact``
            close = ["gamma"] if name in ("scale", "scale_fact") else difflib.get_close_matches(name, known, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise TypeError(f"bcos_cifar got unknown argument(s) {', '.join(hints)}; accepted: {', '.join(known)}")
    return BcosCifarConfig(**kwargs)


class BcosCifarNet(nn.Module):
    """AddInverse, nine B-cos convolutions (App. C.1.1), global average pooling, ``/T + b``.

    ``width`` multiplies the channel counts of the first eight layers so that the network trains on
    a CPU; ``max_out=1`` gives the plain network, ``max_out=2`` the MaxOut network of Tab. 1.
    """

    def __init__(self, config: BcosCifarConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = _config_from(kwargs)
        elif kwargs:
            raise TypeError("pass either a BcosCifarConfig or keyword arguments, not both")
        for name in ("width", "b"):
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
        if not config.width > 0:
            raise ValueError(f"width must be > 0, got {config.width}")
        self.config = config.resolved()
        cfg = self.config
        self.encoding = AddInverse(cfg.in_channels)
        channels = [max(1, round(c * cfg.width)) for c in CHANNELS] + [cfg.num_classes]
        full_inputs = [2 * cfg.in_channels, *CHANNELS]
        layers, c_in = [], 2 * cfg.in_channels
        for k, s, p, c_out, c_full in zip(KERNELS, STRIDES, PADDINGS, channels, full_inputs):
            gamma = cfg.gamma * (c_in / c_full) ** ((cfg.b - 1) / 2) if cfg.width_scaled_gamma else cfg.gamma
            layers.append(BcosConv2d(c_in, c_out, k, s, p, b=cfg.b, max_out=cfg.max_out, scale=gamma))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.logits = LogitLayer(cfg.temperature, cfg.logit_bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(self.encoding(x)).mean(dim=(2, 3)))


@register_model
def bcos_cifar(**kwargs) -> BcosCifarNet:
    """The CIFAR-10 B-cos network of App. C.1.1 (see :class:`BcosCifarConfig` for the arguments)."""
    return BcosCifarNet(_config_from(kwargs))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)



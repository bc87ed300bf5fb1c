"""B-cos layers: the B-cos transform as a drop-in replacement for linear and convolutional units.

A B-cos unit computes ``|cos(x, w_hat)|^(B-1) * w_hat^T x`` (Eq. (3), in matrix form Eq. (9) and
Eq. (D.9) of the B-cos paper), optionally the MaxOut of several such units (Eq. (17)), times a
fixed output scale ``gamma`` (App. C.1).  Written as ``decide(scale) * (W_hat x)`` the layer is the
input-dependent linear map ``W~(x) x`` of Eqs. (10)-(11): the dynamic scale is the layer's only
decision, and freezing it (see :mod:`linearlens.engine.state`) makes the input gradient of any
output exactly the corresponding row of ``W(x)`` (Eqs. (13)-(14)).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.state import decide

__all__ = ["BcosConv2d", "BcosLinear", "LogitLayer"]

_EPS = 1e-6
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _reject_unknown(cls_name: str, unknown: dict, known: Sequence[str]) -> None:
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise TypeError(
        f"{cls_name} got unknown argument(s) {', '.join(hints)}; accepted arguments are: {', '.join(known)}"
    )


def _check_common(cls_name: str, b: float, max_out: int, scale: float) -> None:
    if not isinstance(b, (int, float)) or not math.isfinite(b) or b < 1:
        raise ValueError(f"{cls_name}: B must be a finite number >= 1 (B = 1 is a linear layer), got {b!r}")
    if not isinstance(max_out, int) or max_out < 1:
        raise ValueError(f"{cls_name}: max_out must be an integer >= 1 (1 = no MaxOut), got {max_out!r}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{cls_name}: scale (the fixed output scale gamma) must be finite and > 0, got {scale!r}")


def _pair(value: int | Sequence[int], name: str, cls_name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(f"{cls_name}: {name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


class _BcosUnit(nn.Module):
    """What B-cos linear and convolutional layers share: B, MaxOut, output scale, the scale rule."""

    b: float
    max_out: int
    scale: float
    out_units: int

    def _cosine_scale(self, linear_out: Tensor, patch_norm: Tensor) -> Tensor:
        """``|cos(x, w_hat)|^(B-1)`` (Eq. (11)); ``patch_norm`` broadcasts against ``linear_out``."""
        cos = linear_out.abs() / (patch_norm + _EPS)
        if self.b >= 2:
            return cos if self.b == 2 else cos.pow(self.b - 1)
        # For 1 < B < 2 the derivative of cos^(B-1) is infinite at cos = 0 (a zero patch), which would
        # make training gradients NaN; the double where keeps the value exact and the gradient finite.
        positive = cos > 0
        return torch.where(positive, torch.where(positive, cos, 1.0).pow(self.b - 1), 0.0)

    def _maxout_and_scale(self, out: Tensor, channel_dim: int) -> Tensor:
        if self.max_out > 1:
            # ``amax`` is frozen by the tracer as the selection of the winning unit (Eq. (17)).
            out = out.unflatten(channel_dim, (self.out_units, self.max_out)).amax(channel_dim + 1)
        if self.scale != 1:
            out = out * self.scale
        return out

    def normalized_weight(self) -> Tensor:
        """The weights scaled to unit norm per unit (the hat operator, Eq. (D.3))."""
        w = self.weight
        return w / torch.linalg.vector_norm(w.flatten(1), dim=1).clamp_min(1e-12).view(-1, *[1] * (w.dim() - 1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, B={self.b}, max_out={self.max_out}, scale={self.scale:g}"


class BcosLinear(_BcosUnit):
    """Fully connected B-cos layer, Eq. (9) of the B-cos paper.

    Args:
        in_features, out_features: sizes of the input and of the output.
        b: the exponent B >= 1; ``b=1`` is exactly a linear layer with unit-norm weight rows.
        max_out: number of B-cos units per output neuron combined by MaxOut (Eq. (17)).
        scale: fixed output scale gamma (App. C.1).
    """

    _ARGS = ("in_features", "out_features", "b", "max_out", "scale")

    def __init__(
        self, in_features: int, out_features: int, b: float = 2.0, max_out: int = 1, scale: float = 1.0, **unknown
    ) -> None:
        super().__init__()
        _reject_unknown(type(self).__name__, unknown, self._ARGS)
        _check_common(type(self).__name__, b, max_out, scale)
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BcosLinear: {name} must be a positive int, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        self.b, self.max_out, self.scale, self.out_units = float(b), max_out, float(scale), out_features
        self.weight = nn.Parameter(torch.empty(out_features * max_out, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"BcosLinear expected inputs whose last dimension is {self.in_features}, got shape {tuple(x.shape)}"
            )
        out = F.linear(x, self.normalized_weight())
        if self.b != 1:
            out = out * decide(
                lambda lin, inp: self._cosine_scale(lin, torch.linalg.vector_norm(inp, dim=-1, keepdim=True)),
                out,
                x,
            )
        return self._maxout_and_scale(out, x.dim() - 1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}" + super().extra_repr()


class BcosConv2d(_BcosUnit):
    """Convolutional B-cos layer, Alg. 1 and Eq. (9) of the B-cos paper.

    The norm of each input patch is computed with exactly the padding the convolution sees, for
    every ``padding_mode``, so that ``cos`` is the cosine between the kernel and the patch it
    actually multiplies.  Grouped convolutions use the norm of the patch within the group.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode:
            as for :class:`torch.nn.Conv2d` (no bias: a B-cos unit has none).
        b: the exponent B >= 1; ``b=1`` is exactly a convolution with unit-norm kernels.
        max_out: number of B-cos units per output channel combined by MaxOut (Eq. (17)).
        scale: fixed output scale gamma (App. C.1).
    """

    _ARGS = (
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
        "padding_mode", "b", "max_out", "scale",
    )

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        b: float = 2.0,
        max_out: int = 1,
        scale: float = 1.0,
        **unknown,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _reject_unknown(name, unknown, self._ARGS)
        _check_common(name, b, max_out, scale)
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                f"divisible by groups ({groups})"
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.kernel_size = _pair(kernel_size, "kernel_size", name, 1)
        self.stride = _pair(stride, "stride", name, 1)
        self.padding = _pair(padding, "padding", name, 0)
        self.dilation = _pair(dilation, "dilation", name, 1)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.padding_mode = padding_mode
        self.b, self.max_out, self.scale, self.out_units = float(b), max_out, float(scale), out_channels
        self.weight = nn.Parameter(
            torch.empty(out_channels * max_out, in_channels // groups, *self.kernel_size)
        )
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.register_buffer("_ones", torch.ones(groups, 1, *self.kernel_size), persistent=False)

    def _padded(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if self.padding_mode == "zeros" or self.padding == (0, 0):
            return x, self.padding
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)

    def patch_norm(self, x: Tensor) -> Tensor:
        """``||x_patch||`` for every output position and group, shape ``(N, groups, H', W')``.

        ``x`` must already carry any non-zero padding (see :meth:`_padded`).
        """
        padding = self.padding if self.padding_mode == "zeros" else (0, 0)
        if self.groups == 1:
            squared = torch.linalg.vector_norm(x, dim=1, keepdim=True).square()
        else:
            squared = x.unflatten(1, (self.groups, -1)).square().sum(2)
        # avg_pool2d rejects padding beyond half the kernel, which nn.Conv2d (and so this layer) allows.
        if self.dilation == (1, 1) and all(2 * p <= k for p, k in zip(padding, self.kernel_size)):
            summed = F.avg_pool2d(squared, self.kernel_size, self.stride, padding, divisor_override=1)
        else:
            summed = F.conv2d(squared, self._ones.to(x.dtype), None, self.stride, padding, self.dilation, self.groups)
        # Kept away from 0: the derivative of sqrt is infinite at an all-zero patch (NaN gradients).
        return summed.clamp_min(_EPS * _EPS).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"BcosConv2d expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        xp, padding = self._padded(x)
        out = F.conv2d(xp, self.normalized_weight(), None, self.stride, padding, self.dilation, self.groups)
        if self.b != 1:
            out = out * decide(self._scale_from, out, xp)
        return self._maxout_and_scale(out, 1)

    def _scale_from(self, linear_out: Tensor, x_padded: Tensor) -> Tensor:
        norm = self.patch_norm(x_padded)
        if self.groups > 1:
            norm = norm.repeat_interleave(linear_out.shape[1] // self.groups, dim=1)
        return self._cosine_scale(linear_out, norm)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}"
        )
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + super().extra_repr()


class LogitLayer(nn.Module):
    """The output layer of App. C.1: ``y = x / T + b``.

    The temperature T counteracts the output scales gamma; the bias b (``log(0.1/0.9)`` for
    CIFAR-10, Eq. (16)) makes a zero input predict probability 0.1 per class.  The bias is the only
    residual of a B-cos network: ``f(x) = W(x) x + b``.
    """

    def __init__(self, temperature: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"LogitLayer: temperature must be finite and > 0, got {temperature!r}")
        if not math.isfinite(bias):
            raise ValueError(f"LogitLayer: bias must be finite, got {bias!r}")
        self.temperature, self.bias = float(temperature), float(bias)

    def forward(self, x: Tensor) -> Tensor:
        return x / self.temperature + self.bias

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, bias={self.bias:.4f}"

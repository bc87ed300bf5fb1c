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

from ..engine.state import Mode, current_mode, decide
from . import _bcos_fused as fused
from . import _bcos_transposed as transposed
from ._bcos_live import _BcosConv2dLive, _fused_bfloat16_autocast
from ._bcos_numerics import _tiny

__all__ = ["BcosConv2d", "BcosLinear", "LogitLayer"]

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
        cos = linear_out.abs() / patch_norm.clamp_min(math.sqrt(_tiny(patch_norm)))
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

    def _padded(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if self.padding_mode == "zeros" or self.padding == (0, 0):
            return x, self.padding
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode), (0, 0)

    def _channel_squares(self, x: Tensor) -> Tensor:
        """``sum_c x_c^2`` within each group, shape ``(N, groups, H, W)``.

        One read of ``x`` with the fused kernel; else squaring and summing (``linalg.vector_norm(x, dim=1)``'s
        reduction over the channel dimension is an order of magnitude slower on CPU).
        """
        if fused.supports(x):
            return fused.channel_squares(x, self.groups)
        squared = x * x
        return squared.sum(1, keepdim=True) if self.groups == 1 else squared.unflatten(1, (self.groups, -1)).sum(2)

    def _window_geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Zero padding the windows see, padded input size and output size, for an input ``height x width``."""
        ph, pw = self.padding if self.padding_mode == "zeros" else (0, 0)
        hp, wp = height + 2 * ph, width + 2 * pw
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return (ph, pw), (hp, wp), ((hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1)

    def _patch_sums(self, channel_squares: Tensor) -> Tensor:
        """``||x_patch||^2``: the channel squares summed over every kernel window, ``(N, groups, H', W')``.

        A separable box sum of strided slices, for every kernel size, stride, dilation and padding:
        ``avg_pool2d`` (which also rejects padding beyond half the kernel) or a convolution with ones
        costs several times more on these one-channel maps and starts a parallel region per call.
        """
        (ph, pw), _, (oh, ow) = self._window_geometry(*channel_squares.shape[-2:])
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        t = F.pad(channel_squares, (pw, pw, ph, ph)) if ph or pw else channel_squares
        rows = t[..., 0 : (oh - 1) * sh + 1 : sh, :]
        for i in range(1, kh):
            rows = rows + t[..., i * dh : i * dh + (oh - 1) * sh + 1 : sh, :]
        sums = rows[..., 0 : (ow - 1) * sw + 1 : sw]
        for j in range(1, kw):
            sums = sums + rows[..., j * dw : j * dw + (ow - 1) * sw + 1 : sw]
        return sums

    def _patch_sums_transposed(self, grad: Tensor, size: tuple[int, int]) -> Tensor:
        """The adjoint of :meth:`_patch_sums` for a ``size = (height, width)`` input: spreads ``grad`` back
        over the windows it summed."""
        height, width = size
        (ph, pw), (hp, wp), (oh, ow) = self._window_geometry(height, width)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        rows = grad.new_zeros(*grad.shape[:-1], wp)
        for j in range(kw):
            rows[..., j * dw : j * dw + (ow - 1) * sw + 1 : sw] += grad
        spread = grad.new_zeros(*grad.shape[:-2], hp, wp)
        for i in range(kh):
            spread[..., i * dh : i * dh + (oh - 1) * sh + 1 : sh, :] += rows
        return spread[..., ph : ph + height, pw : pw + width]

    def _convolves_transposed(self, xp: Tensor) -> bool:
        """Whether training should convolve the plain ``xp`` channels-last internally (see
        :mod:`._bcos_transposed`; inference keeps the plain convolution, which measured as fast there)."""
        _, _, (oh, ow) = self._window_geometry(*xp.shape[-2:])
        return transposed.applies(xp, oh * ow, self.kernel_size, self.max_out, self.groups)

    def _norm_maps(self, squares: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From the channel squares: ``S = ||x_patch||^2`` (:meth:`_patch_sums`), ``d = sqrt(max(S, tiny))``
        and :meth:`_multiplier` of ``d``; one fused call where the kernels take ``squares``."""
        if squares.dtype in (torch.float32, torch.float64) and fused.supports(squares):
            padding, _, size = self._window_geometry(*squares.shape[-2:])
            return fused.patch_norms(
                squares, size, self.kernel_size, self.stride, self.dilation, padding, self.b, self.scale
            )
        sums = self._patch_sums(squares)
        norm = sums.clamp_min(_tiny(sums)).sqrt()
        return sums, norm, self._multiplier(norm)

    def patch_norm(self, x: Tensor) -> Tensor:
        """``||x_patch||`` for every output position and group, shape ``(N, groups, H', W')``.

        ``x`` must already carry any non-zero padding (see :meth:`_padded`).  Squared sums are floored at the
        dtype's smallest normal number (see :func:`_tiny`), which only matters for an all-zero patch.
        """
        return self._norm_maps(self._channel_squares(x))[1]

    def _multiplier(self, norm: Tensor) -> Tensor:
        """The per-position part of the dynamic scale from ``norm = ||x_patch||`` (``(N, groups, H', W')``,
        small): ``gamma / norm`` for B = 2, ``1 / norm`` otherwise."""
        return self.scale / norm if self.b == 2 else norm.reciprocal()

    def _dynamic_factor(self, linear_out: Tensor, multiplier: Tensor) -> Tensor:
        """``gamma * (|w_hat^T x| / ||x_patch||)^(B-1)``: the dynamic scale of Eq. (11) times the fixed scale
        gamma, with ``multiplier`` from :meth:`_multiplier`.

        Not differentiable (in-place operations / fused kernel): for frozen decisions, inference and
        :class:`_BcosConv2dLive`.
        """
        if fused.supports(linear_out, compute=(multiplier,)):
            return fused.scale_forward(
                linear_out, multiplier, 1, self.groups, self.b, self.scale, factor_only=True
            )[0]
        grouped = linear_out if self.groups == 1 else linear_out.unflatten(1, (self.groups, -1))
        factor = grouped.abs()
        factor.mul_(multiplier if self.groups == 1 else multiplier.unsqueeze(2))
        if self.b != 2:
            factor.pow_(self.b - 1)
            if self.scale != 1:
                factor.mul_(self.scale)
        return factor if self.groups == 1 else factor.view_as(linear_out)

    def _maxout(self, linear_out: Tensor) -> Tensor:
        """MaxOut over the ``max_out`` units of every output channel (Eq. (17)).

        Taken on the linear outputs, before the dynamic scale: ``o -> o |o|^(B-1)`` is increasing and
        the units of one MaxOut share their input patch, so the winner and the output are those of the
        maximum of the B-cos outputs, at half the elementwise work.
        """
        if self.max_out == 1:
            return linear_out
        # In the frozen modes ``amax`` is frozen by the tracer as the selection of the winning unit.
        return linear_out.unflatten(1, (self.out_units, self.max_out)).amax(2)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"BcosConv2d expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        xp, padding = self._padded(x)
        w_hat = self.normalized_weight()
        live = current_mode() is Mode.LIVE
        if self.b != 1 and live:
            if not (torch.is_grad_enabled() and (xp.requires_grad or w_hat.requires_grad)):
                return self._live_inference(xp, w_hat, padding)
            if torch._C._are_functorch_transforms_active():
                return self._live_reference(xp, w_hat, padding)
            if not torch.is_autocast_enabled(xp.device.type):
                return _BcosConv2dLive.apply(xp, w_hat, self, padding)
            if _fused_bfloat16_autocast(xp):
                # bfloat16 autocast on the CPU: the whole layer in bfloat16 (the casts are differentiable, so
                # the weight's gradient arrives in float32), norms and scales computed in float32.
                with torch.autocast(xp.device.type, enabled=False):
                    return _BcosConv2dLive.apply(xp.to(torch.bfloat16), w_hat.to(torch.bfloat16), self, padding)
            # Other autocasts: the differentiable composition lets autocast and autograd keep the dtypes
            # consistent (the convolution runs in the low-precision dtype, the saved inputs stay in theirs).
            return self._live_reference(xp, w_hat, padding)
        linear = F.conv2d(xp, w_hat, None, self.stride, padding, self.dilation, self.groups)
        if self.b == 1 and (live or self.max_out == 1):
            out = self._maxout(linear)
            return out * self.scale if self.scale != 1 else out
        # FROZEN / TWO_BATCH: the dynamic scale (Eqs. (10)-(11)) and the MaxOut winner (Eq. (17)) are the
        # layer's decisions; a MaxOut layer is then the fixed selection-and-scaling of its units.
        if self.max_out == 1:
            return linear * decide(self._frozen_factor, linear, xp)
        units = linear.unflatten(1, (self.out_units, self.max_out))
        return (units * decide(self._frozen_selection, linear, xp)).sum(2)

    def _frozen_factor(self, linear_out: Tensor, x_padded: Tensor) -> Tensor:
        return self._dynamic_factor(linear_out, self._norm_maps(self._channel_squares(x_padded))[2])

    def _frozen_selection(self, linear_out: Tensor, x_padded: Tensor) -> Tensor:
        """Per unit, ``gamma |cos|^(B-1)`` for the MaxOut winner and 0 for the others, ``(N, C, max_out, H', W')``.

        The winner is the first maximum of the linear outputs (as ``argmax``; the same unit wins the
        B-cos outputs, see :meth:`_maxout`).  Found by comparisons: ``argmax`` over a short middle
        dimension is orders of magnitude slower on CPU.
        """
        units = linear_out.unflatten(1, (self.out_units, self.max_out))
        if self.max_out == 2:
            first, second = units.unbind(2)
            second_wins = second > first
            best = torch.maximum(first, second)
        else:
            best, winner = units[:, :, 0], torch.zeros_like(units[:, :, 0], dtype=torch.uint8)
            for m in range(1, self.max_out):
                better = units[:, :, m] > best
                best = torch.where(better, units[:, :, m], best)
                winner.masked_fill_(better, m)
        if self.b == 1:
            factor = torch.full_like(best, self.scale)
        else:
            factor = self._dynamic_factor(best.contiguous(), self._norm_maps(self._channel_squares(x_padded))[2])
        selection = factor.new_empty(units.shape)
        if self.max_out == 2:
            torch.mul(factor, second_wins, out=selection[:, :, 1])
            torch.sub(factor, selection[:, :, 1], out=selection[:, :, 0])  # exact: factor or 0
        else:
            for m in range(self.max_out):
                torch.mul(factor, winner == m, out=selection[:, :, m])
        return selection

    def _live_inference(self, xp: Tensor, w_hat: Tensor, padding: tuple[int, int]) -> Tensor:
        """Eq. (9) without autograd: MaxOut, scale and product in one fused pass (or in place, eagerly)."""
        linear = F.conv2d(xp, w_hat, None, self.stride, padding, self.dilation, self.groups)
        multiplier = self._norm_maps(self._channel_squares(xp))[2]
        if fused.supports(linear, compute=(multiplier,)):
            out = linear if self.max_out == 1 else None
            return fused.scale_forward(linear, multiplier, self.max_out, self.groups, self.b, self.scale, out)[0]
        out = self._maxout(linear)
        return self._dynamic_factor(out, multiplier).mul_(out)

    def _live_reference(self, xp: Tensor, w_hat: Tensor, padding: tuple[int, int]) -> Tensor:
        """Eq. (9) composed of differentiable operations: for torch.func transforms and double backward."""
        out = self._maxout(F.conv2d(xp, w_hat, None, self.stride, padding, self.dilation, self.groups))
        norm = self.patch_norm(xp)
        if self.groups > 1:
            norm = norm.repeat_interleave(out.shape[1] // self.groups, dim=1)
        scaled = out * self._cosine_scale(out, norm)
        return scaled * self.scale if self.scale != 1 else scaled

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

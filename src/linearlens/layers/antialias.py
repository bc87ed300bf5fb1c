"""Anti-aliased downsampling: BlurPool and FLC pooling (Sec. 3.2 and Fig. 2 of the chest X-ray paper).

A strided convolution samples its output on a coarse grid without low-pass filtering first, which
folds high frequencies back into the map and shows up as a grid in B-cos explanations.  The chest
X-ray paper replaces every such site by a stride-1 convolution followed by one of these layers at
the original stride.  Both are fixed linear maps of their input (no parameters, no decisions), so
the engine's tracer passes them unchanged and ``f(x) = W(x) x + b`` keeps holding exactly.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BlurPool", "FLCPooling", "downsample", "ANTIALIAS_KINDS", "binomial_filter", "lowpass_matrix"]

ANTIALIAS_KINDS = ("blurpool", "flc")


def _check_int(cls_name: str, name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{cls_name}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def binomial_filter(size: int) -> Tensor:
    """The normalised 1-D binomial filter ``C(size-1, k) / 2^(size-1)`` (Zhang's BlurPool filters)."""
    _check_int("binomial_filter", "size", size, 1)
    row = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    return row / row.sum()


class BlurPool(nn.Module):
    """Depthwise binomial low-pass filter with reflect padding, then subsampling by ``stride``.

    The ``size x size`` filter is the outer product of :func:`binomial_filter` with itself, applied
    to every channel separately.  The input is reflect-padded by ``(size - 1) // 2`` before and
    ``size // 2`` after each spatial axis, so the output has ``ceil(n / stride)`` samples, the size a
    stride-``stride`` convolution with "same" padding gives.  ``size = 1`` is plain subsampling
    ``x[..., ::stride, ::stride]``.  A dimension too short to reflect (``n <= padding``) is padded
    by replication instead, the only extension defined there.

    Args:
        channels: number of input channels (the filter is depthwise).
        stride: subsampling factor.
        size: filter taps per axis (1 to 7 are common; 3 is the chest X-ray paper's choice).
    """

    def __init__(self, channels: int, stride: int = 2, size: int = 3) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = _check_int(name, "channels", channels, 1)
        self.stride = _check_int(name, "stride", stride, 1)
        self.size = _check_int(name, "size", size, 1)
        row = binomial_filter(size)
        kernel = torch.outer(row, row).expand(channels, 1, size, size).contiguous()
        # A buffer, not a parameter: the filter is part of the architecture and is never trained.
        self.register_buffer("kernel", kernel.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"BlurPool expected input of shape (N, {self.channels}, H, W), got {tuple(x.shape)}")
        before, after = (self.size - 1) // 2, self.size // 2
        if before or after:
            short = min(x.shape[-2:]) <= max(before, after)
            x = F.pad(x, (before, after, before, after), mode="replicate" if short else "reflect")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}, size={self.size}"


@lru_cache(maxsize=64)
def _lowpass_matrix(n: int, stride: int) -> Tensor:
    out = -(-n // stride)
    # Output frequencies |k| < out / 2 are kept whole.  For an even output size the output's Nyquist
    # bin out/2 receives the input bins +out/2 and -out/2 at half weight each: the real cosine that
    # both alias to.  Keeping only one of them (what cropping an fftshifted spectrum does) gives a
    # complex output whose real part has to be taken; the symmetric pair is real by construction.
    half = out / 2
    ks = torch.arange(-math.ceil(half), math.ceil(half) + 1, dtype=torch.float64)
    weights = torch.where(ks.abs() < half, 1.0, torch.where(ks.abs() == half, 0.5, 0.0))
    j = torch.arange(out, dtype=torch.float64)[:, None, None]
    l_ = torch.arange(n, dtype=torch.float64)[None, :, None]
    # y_j = (1/n) sum_k w_k X_k exp(2 pi i k j / out), X_k = sum_l x_l exp(-2 pi i k l / n); the kept
    # set is symmetric in k, so the sum is the cosine series below and the matrix is real.
    phase = 2 * math.pi * ks[None, None, :] * (j / out - l_ / n)
    return (weights * torch.cos(phase)).sum(-1) / n


def lowpass_matrix(n: int, stride: int = 2) -> Tensor:
    """The real ``ceil(n / stride) x n`` matrix of FLC pooling along one axis (float64).

    Row ``j`` evaluates the input's trigonometric interpolant, cut to the frequencies an output of
    ``m = ceil(n / stride)`` samples can hold, at position ``j n / m`` (``stride * j`` when ``stride``
    divides ``n``).  It equals ``ifft_m(crop(fft_n(x)))`` with the ``1/n`` factor on the inverse, so a
    constant keeps its value (the normalisation of an average pool, not of an orthonormal DFT).
    """
    _check_int("lowpass_matrix", "n", n, 1)
    _check_int("lowpass_matrix", "stride", stride, 1)
    return _lowpass_matrix(n, stride).clone()


class FLCPooling(nn.Module):
    """Frequency low-cut pooling: an ideal low-pass in the 2-D Fourier domain, then ``1/stride`` the size.

    Keeps the central ``1/stride`` of the spectrum along each axis (the central half for the usual
    stride 2, as in the chest X-ray paper's FLC) and returns the ``ceil(H/stride) x ceil(W/stride)``
    image with exactly that spectrum.  Unlike the reference code this layer

    * is linear: no absolute value is taken of the (real) result;
    * keeps the DC bin at every size, so a constant image stays the same constant (also at sizes
      2 mod 4, where cropping the shifted spectrum loses it);
    * treats the Nyquist bin of an even output size as the symmetric pair ``+-m/2`` at half weight
      (a cosine exactly at the cutoff keeps half its amplitude, a sine there vanishes; this is what
      makes the map real by construction and stride 1 the identity);
    * works at odd sizes (output ``ceil(n/stride)``, the size of a strided convolution).

    The 2-D transform with a rectangular crop is separable, so the layer applies the real per-axis
    matrices of :func:`lowpass_matrix`, ``y = L_H x L_W^T``: the same numbers as the FFT route,
    without complex tensors (which the engine's tracer does not follow) and exact in float64.
    """

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = _check_int(type(self).__name__, "stride", stride, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"FLCPooling expected input of shape (..., H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"FLCPooling expected a floating-point input, got {x.dtype}")
        rows = _lowpass_matrix(x.shape[-2], self.stride).to(x.device, x.dtype)
        cols = _lowpass_matrix(x.shape[-1], self.stride).to(x.device, x.dtype)
        return torch.matmul(torch.matmul(rows, x), cols.T)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


def downsample(kind: str | None, channels: int, stride: int, blur_size: int = 3) -> nn.Module:
    """The anti-aliasing pool replacing a stride-``stride`` site: BlurPool, FLC, or identity for ``None``.

    ``kind=None`` returns :class:`torch.nn.Identity` only for ``stride == 1``; a strided site without
    anti-aliasing keeps its stride in the layer itself.
    """
    if kind == "blurpool":
        return BlurPool(channels, stride, blur_size)
    if kind == "flc":
        return FLCPooling(stride)
    if kind is None and stride == 1:
        return nn.Identity()
    raise ValueError(f"antialias must be one of {ANTIALIAS_KINDS} or None (with stride 1), got {kind!r}")

"""Training on a plain (NCHW) float32 input: the B-cos layer convolves it channels-last internally, the
layout changes riding on passes the layer makes anyway (kernels: :mod:`._bcos_transposed_source`).

oneDNN convolves a channels-last tensor as it is but reorders a plain one to its blocked layout and back.
On this project's CPU (1 thread) a 64 -> 64 3x3 convolution of 32 x 32 maps took 0.72x as long forward on a
channels-last tensor, and the convolution backward saves more.  A training step (forward and backward) of
a B-cos layer on a plain input took, this way, 0.80-0.98x as long as the untransposed path for 3x3, 5x5 and
7x7 kernels on maps of 20 x 20 to 224 x 224 (6 to 256 channels), 0.92-1.05x on 16 x 16 maps (the worst with
256 channels), and 1.29-1.32x for 1x1 kernels, whose plain convolution needs no reorder
(``benchmarks/bench_bcos_transposed_shapes.py``, 1 thread, two runs, the 1x1 rows in the second).  So
:func:`applies` asks for a kernel larger than 1x1 and at least :data:`MIN_POSITIONS` output positions.
Inference does not use it: the extra layout change of the input and an output written to a fresh buffer
instead of in place cost about what the convolution saves (0.90-1.23x for kernels larger than 1x1).
Only float32 and one group take this path, without MaxOut or with the MaxOut of two units (which also needs
AVX-512 BW/VL and BMI2); everything else keeps the untransposed kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _bcos_fused as fused

__all__ = ["available", "applies", "squares_to_nhwc", "scale_forward_to_nchw", "scale_backward_from_nchw",
           "correct_to_nchw"]

# Output positions from which convolving channels-last pays for itself (16 x 16; see the module docstring).
MIN_POSITIONS = 256


def available() -> bool:
    """Whether the transposing kernels were compiled (they need AVX-512)."""
    lib = fused._load()
    return lib is not None and bool(lib.transposed_available())


def maxout_available() -> bool:
    """Whether their MaxOut-of-two variant was compiled (it also needs AVX-512 BW/VL and BMI2)."""
    return available() and bool(fused._load().transposed_maxout_available())  # type: ignore[union-attr]


def applies(x: Tensor, out_positions: int, kernel_size: tuple[int, int], units: int, groups: int) -> bool:
    """Whether training a B-cos convolution on ``x`` (already padded) should convolve it channels-last."""
    return (
        x.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous()
        and kernel_size[0] * kernel_size[1] > 1
        and groups == 1
        and out_positions >= MIN_POSITIONS
        and fused.supports(x)
        and (units == 1 and available() or units == 2 and maxout_available())
    )


def _lib():
    return fused._load()


def squares_to_nhwc(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """A channels-last copy of the plain ``x`` and its per-group channel squares ``(N, groups, H, W)`` (the
    values of :func:`._bcos_fused.channel_squares`), in one read of ``x``."""
    n, c, h, w = x.shape
    xt = torch.empty_like(x, memory_format=torch.channels_last)
    squares = x.new_empty(n, groups, h, w)
    fused._launch(_lib().squares_to_nhwc_f32, n, [(x, c * h * w), (xt, c * h * w), (squares, groups * h * w)],
                  c, groups, h * w)
    return xt, squares


def _nhwc(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def scale_forward_to_nchw(
    linear: Tensor, multiplier: Tensor, groups: int, b: float, scale: float, units: int = 1
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``y = f o`` (Eq. (11); ``f`` as in :func:`._bcos_fused.scale_forward`) in the plain layout, from the
    channels-last convolution output.  With ``units = 2`` (MaxOut, Eq. (17)) ``o`` is the winner of each
    channel's two units and the winning outputs (channels-last) and the one-byte winner mask (the layout
    :func:`._bcos_fused.scale_forward` gives a channels-last input) come back too, for the backward."""
    linear = _nhwc(linear)
    multiplier = multiplier.contiguous()
    n, cu, h, w = linear.shape
    c = cu // units
    y = linear.new_empty(n, c, h, w)
    best = win = None
    if units == 2:
        best = torch.empty((n, c, h, w), dtype=linear.dtype, memory_format=torch.channels_last)
        win = torch.empty(n, h, w, c, units, dtype=torch.uint8).permute(0, 3, 4, 1, 2)
    fused._launch(_lib().scale_forward_to_nchw_f32, n,
                  [(linear, cu * h * w), (multiplier, groups * h * w), (y, c * h * w), (best, c * h * w),
                   (win, cu * h * w)],
                  c, units, groups, h * w, float(b), float(scale))
    return y, best, win


def scale_backward_from_nchw(
    grad_out: Tensor, linear: Tensor, multiplier: Tensor, groups: int, b: float, scale: float,
    winners: Tensor | None = None, units: int = 1,
) -> tuple[Tensor, Tensor]:
    """``dL/do = B f dL/dy`` channels-last (for the channels-last convolution's backward; with ``units = 2``
    to the MaxOut units by ``winners``, ties shared) and, per group and position, ``sum_c dL/do * o``, from the
    plain ``dL/dy`` and the channels-last ``o`` (the winners' outputs with MaxOut)."""
    grad_out = grad_out.contiguous()
    linear = _nhwc(linear)
    multiplier = multiplier.contiguous()
    n, c, h, w = grad_out.shape
    grad_linear = torch.empty((n, c * units, h, w), dtype=grad_out.dtype, memory_format=torch.channels_last)
    sums = grad_out.new_empty(n, groups, h, w)
    fused._launch(_lib().scale_backward_from_nchw_f32, n,
                  [(grad_out, c * h * w), (linear, c * h * w), (winners, c * units * h * w),
                   (multiplier, groups * h * w), (grad_linear, c * units * h * w), (sums, groups * h * w)],
                  c, units, groups, h * w, float(b), float(scale))
    return grad_linear, sums


def correct_to_nchw(grad_x: Tensor, xt: Tensor, spread: Tensor) -> Tensor:
    """``dL/dx + x * spread`` in the plain layout, from the channels-last ``dL/dx`` and ``x``; ``spread``
    ``(N, groups, H, W)`` is broadcast over each group's channels."""
    grad_x, xt, spread = _nhwc(grad_x), _nhwc(xt), spread.contiguous()
    n, c, h, w = grad_x.shape
    groups = spread.shape[1]
    out = grad_x.new_empty(n, c, h, w)
    fused._launch(_lib().correct_to_nchw_f32, n,
                  [(grad_x, c * h * w), (xt, c * h * w), (spread, groups * h * w), (out, c * h * w)],
                  c, groups, h * w)
    return out

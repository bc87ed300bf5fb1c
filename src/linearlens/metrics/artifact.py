"""Grid-artifact score of explanation maps: spectral energy at the downsampling grid's frequencies.

A network that downsamples by a total stride ``s`` without anti-aliasing imprints a periodic pattern
of period ``s`` on its explanations (the checkerboards of Fig. 2 of the chest X-ray paper, Sec. 3.2).
Such a pattern has its energy at the grid frequencies ``(k_y / s, k_x / s)``, ``k in {0, ..., s-1}``,
other than ``(0, 0)``.  The score compares the power at those frequencies with the average power of
the spectrum *around* them:

    score = sum_g P(g) / sum_g B(g) - 1,

with ``P(g) = |F(g)|^2`` at grid frequency ``g`` (the map's 2-D DFT, mean removed) and ``B(g)`` the
mean of ``|F|^2`` over the ring of bins at Chebyshev distance ``1..radius`` around ``g`` (other grid
frequencies excluded).  A map without a grid pattern has ``P ~ B`` in expectation (score about 0);
a grid of amplitude ``a`` adds ``~ a^2`` to ``P`` only (monotone in ``a``).  Because the reference is
the local spectrum, smoothing a map lowers ``P`` and ``B`` alike and cannot make artifacts vanish
from the score unless it removes the grid frequencies more than their neighbourhood (which is what
anti-aliasing does).  Per map the peak is a handful of DFT bins, so the score of one map is noisy
(about +-0.9 on maps without a grid); compare methods or networks by its mean over many maps.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["artifact_score", "grid_frequencies"]


def grid_frequencies(height: int, width: int, stride: int) -> list[tuple[int, int]]:
    """DFT bins ``(row, column)`` of the grid frequencies ``(k_y / s, k_x / s)`` other than DC, for a
    ``height x width`` map (the nearest bin when the size is not a multiple of the stride)."""
    rows = {round(k * height / stride) % height for k in range(stride)}
    cols = {round(k * width / stride) % width for k in range(stride)}
    return sorted((r, c) for r in rows for c in cols if (r, c) != (0, 0))


def artifact_score(maps: Tensor, stride: int, radius: int = 2) -> Tensor:
    """The grid-artifact score (module docstring) of every map in ``maps`` (``(..., H, W)`` -> ``(...)``).

    Args:
        maps: explanation maps, floating point, at least 2-D (e.g. ``(N, K, H, W)`` attributions).
        stride: total downsampling factor whose grid is scored (e.g. 2 for one stride-2 layer, 32 for
            a ResNet's stem to its last stage); needs ``H, W >= 2 * stride``.
        radius: width in DFT bins of the background ring around each grid frequency.
    """
    if not isinstance(maps, Tensor) or not maps.is_floating_point() or maps.dim() < 2:
        raise ValueError("artifact_score: maps must be a floating-point tensor of shape (..., H, W)")
    if not isinstance(stride, int) or stride < 2:
        raise ValueError(f"artifact_score: stride must be an int >= 2, got {stride!r}")
    if not isinstance(radius, int) or radius < 1:
        raise ValueError(f"artifact_score: radius must be an int >= 1, got {radius!r}")
    height, width = maps.shape[-2:]
    if height < 2 * stride or width < 2 * stride:
        raise ValueError(f"artifact_score: a {height}x{width} map is too small for stride {stride} (need >= 2x)")
    if height < 2 * radius + 1 or width < 2 * radius + 1:
        raise ValueError(f"artifact_score: radius {radius} does not fit a {height}x{width} spectrum")
    if not torch.isfinite(maps).all():
        raise ValueError("artifact_score: maps contain NaN or infinite values")

    x = maps.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().square()

    grid = grid_frequencies(height, width, stride)
    is_grid = torch.zeros(height, width, dtype=torch.bool)
    for r, c in grid:
        is_grid[r, c] = True
    is_grid[0, 0] = True  # DC is neither peak nor background
    peak = torch.zeros(maps.shape[:-2], dtype=torch.float64)
    background = torch.zeros_like(peak)
    offsets = range(-radius, radius + 1)
    for r, c in grid:
        ring_rows, ring_cols = [], []
        for dr in offsets:
            for dc in offsets:
                rr, cc = (r + dr) % height, (c + dc) % width
                if (dr or dc) and not is_grid[rr, cc]:
                    ring_rows.append(rr)
                    ring_cols.append(cc)
        peak += power[..., r, c]
        background += power[..., ring_rows, ring_cols].mean(-1)
    # A constant map has no spectrum at all: no artifact.
    score = torch.where(background > 0, peak / background.clamp_min(torch.finfo(torch.float64).tiny) - 1, 0.0)
    return score.to(maps.dtype)

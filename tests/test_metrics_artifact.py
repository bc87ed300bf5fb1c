"""The grid-artifact score on synthetic maps with a known grid amplitude."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from linearlens.metrics import artifact_score
from linearlens.metrics.artifact import grid_frequencies


def _smooth_field(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Maps with object-like content: low-pass noise blobs plus a little white noise, ``(n, size, size)``."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 1, size // 8, size // 8, generator=g, dtype=torch.float64)
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    return field + 0.05 * torch.randn(n, size, size, generator=g, dtype=torch.float64)


def _comb(size: int, stride: int, phase: int = 0) -> torch.Tensor:
    """1 on every ``stride``-th row and column crossing (the imprint of a strided layer), zero mean."""
    y = (torch.arange(size) % stride == phase).double()
    comb = y[:, None] * y[None, :]
    return comb - comb.mean()


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = maps[:, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="circular"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="circular"), k.view(1, 1, -1, 1))
    return x[:, 0]


def test_no_grid_scores_about_zero():
    scores = artifact_score(_smooth_field(64), stride=4)
    assert scores.shape == (64,)
    assert abs(float(scores.mean())) < 0.25
    white = torch.randn(256, 48, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(artifact_score(white, stride=2).mean())) < 0.15


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_monotone_in_the_grid_amplitude(stride):
    base = _smooth_field(32, seed=stride)
    amplitudes = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    scores = torch.stack([artifact_score(base + a * _comb(64, stride), stride) for a in amplitudes])
    # A weak grid can interfere destructively with a map's own content at a grid frequency, so per map
    # the score is monotone once the grid is not negligible, and on average throughout.
    mean = scores.mean(1)
    assert (mean[1:] > mean[:-1]).all(), mean
    assert (scores[4:] > scores[3:-1]).all()
    assert float(mean[0]) < 0.5 < float(scores[-1].min())


def test_the_score_grows_as_the_square_of_the_amplitude_over_background():
    """On white noise of unit variance the score is the grid power over the noise power: ~ a^2."""
    noise = torch.randn(200, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    small = artifact_score(noise + 0.1 * _comb(32, 4), 4).mean()
    large = artifact_score(noise + 0.2 * _comb(32, 4), 4).mean()
    assert float(large / small) == pytest.approx(4.0, rel=0.25)


def test_blurring_does_not_remove_the_artifact_from_the_score():
    maps = _smooth_field(8, seed=3) + 0.3 * _comb(64, 4)
    sharp, blurred = artifact_score(maps, 4), artifact_score(_blur(maps, 0.8), 4)
    energy = lambda m: torch.fft.fft2(m).abs().square()[..., 16, 0].mean()  # noqa: E731
    assert float(energy(_blur(maps, 0.8))) < 0.3 * float(energy(maps))  # blur removes most grid energy ...
    assert (blurred > 0.3 * sharp).all() and (blurred > 1).all()  # ... but not the artifact score


def test_a_grid_of_another_period_is_not_counted():
    base = _smooth_field(8, seed=4)
    other = artifact_score(base + 0.5 * _comb(64, 4), 3)
    own = artifact_score(base + 0.5 * _comb(64, 4), 4)
    assert float(other.mean()) < 0.3 < float(own.mean())


def test_shapes_dtype_and_constant_maps():
    maps = _smooth_field(6).float().view(2, 3, 64, 64)
    scores = artifact_score(maps, 2)
    assert scores.shape == (2, 3) and scores.dtype == torch.float32
    assert float(artifact_score(torch.ones(16, 16), 2)) == 0.0
    assert grid_frequencies(8, 8, 2) == [(0, 4), (4, 0), (4, 4)]
    assert len(grid_frequencies(64, 64, 4)) == 15
    assert math.isfinite(float(artifact_score(torch.randn(15, 15), 3)))  # sizes that are not multiples


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"maps": torch.ones(8, 8, dtype=torch.long), "stride": 2}, "floating-point"),
        ({"maps": torch.ones(8), "stride": 2}, "floating-point"),
        ({"maps": torch.ones(8, 8), "stride": 1}, "stride must be"),
        ({"maps": torch.ones(8, 8), "stride": 8}, "too small"),
        ({"maps": torch.ones(8, 8), "stride": 2, "radius": 0}, "radius must be"),
        ({"maps": torch.full((8, 8), float("nan")), "stride": 2}, "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        artifact_score(**kwargs)

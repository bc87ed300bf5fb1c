"""Pixel-flipping / degradation curves on hand-built images, maps and models with known answers."""

from __future__ import annotations

import pytest
import torch

from linearlens.metrics import area_under_curve, degradation_curve, patch_ranking
from linearlens.metrics.degradation import degrade, patch_ids


def test_patch_ids_cover_the_image_with_smaller_border_patches():
    ids = patch_ids((5, 7), 3)
    assert ids.shape == (5, 7)
    assert ids.max().item() == 2 * 3 - 1  # ceil(5/3) x ceil(7/3) patches
    assert torch.bincount(ids.flatten()).tolist() == [9, 9, 3, 6, 6, 2]


def test_morf_and_lerf_rank_patches_by_summed_attribution():
    a = torch.zeros(1, 4, 4)
    a[0, :2, :2] = 1.0  # patch 0: sum 4
    a[0, :2, 2:] = -1.0  # patch 1: sum -4
    a[0, 2:, :2] = 0.5  # patch 2: sum 2
    a[0, 3, 3] = 3.0  # patch 3: sum 3
    assert patch_ranking(a, 2, "morf").tolist() == [[0, 3, 2, 1]]
    assert patch_ranking(a, 2, "lerf").tolist() == [[3, 0, 1, 2]]
    random = patch_ranking(a.expand(50, 4, 4), 2, "random", torch.Generator().manual_seed(0))
    assert all(sorted(r) == [0, 1, 2, 3] for r in random.tolist())
    assert len({tuple(r) for r in random.tolist()}) > 5


def test_degrade_replaces_patches_in_rank_order_by_their_channel_mean():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    ranks = torch.tensor([[1, 0, 3, 2]])
    out = degrade(x, ranks, torch.tensor([0, 1, 4]), 2)
    assert out.shape == (1, 3, 2, 4, 4)
    assert torch.equal(out[0, 0], x[0])
    step1 = x[0].clone()
    step1[:, :2, 2:] = x[0, :, :2, 2:].mean((1, 2), keepdim=True)  # rank 0 is patch 1
    assert torch.equal(out[0, 1], step1)
    full = torch.nn.functional.avg_pool2d(x, 2).repeat_interleave(2, 2).repeat_interleave(2, 3)
    assert torch.allclose(out[0, 2], full[0])


class _PixelModel(torch.nn.Module):
    """Class 0 scores the top-left pixel of channel 0, class 1 the bottom-right one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], x[:, 0, -1, -1]], 1)


def test_degradation_curves_with_a_known_model():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 6, generator=g)
    a = torch.zeros(2, 6, 6)
    a[:, 0, 0] = 1.0  # the map points at patch 0, the one class 0 reads
    a[:, 5, 5] = -1.0  # and away from patch 3
    targets = torch.tensor([0, 1])
    curves, steps = degradation_curve(_PixelModel(), x, a, targets, patch_size=3, order="morf", score="logit")
    assert steps.tolist() == [0, 1, 2, 3, 4]
    patch0_mean = x[0, 0, :3, :3].mean()
    patch3_mean = x[1, 0, 3:, 3:].mean()
    # MoRF removes patch 0 first: image 0's class-0 score drops to the patch mean at step 1
    assert torch.allclose(curves[0], torch.stack([x[0, 0, 0, 0]] + [patch0_mean] * 4))
    # image 1 explains class 1, whose pixel sits in the least relevant patch, removed last
    assert torch.allclose(curves[1], torch.stack([x[1, 0, 5, 5]] * 4 + [patch3_mean]))
    lerf, _ = degradation_curve(_PixelModel(), x, a, targets, patch_size=3, order="lerf", score="logit")
    assert torch.allclose(lerf[0], torch.stack([x[0, 0, 0, 0]] * 4 + [patch0_mean]))
    coarse, coarse_steps = degradation_curve(_PixelModel(), x, a, targets, 3, steps=3, score="logit", batch_size=1)
    assert coarse_steps.tolist() == [0, 2, 4]
    assert torch.allclose(coarse, curves[:, [0, 2, 4]])


def test_softmax_scores_and_argument_errors():
    x = torch.rand(2, 1, 4, 4)
    a = torch.rand(2, 4, 4)
    curves, _ = degradation_curve(_PixelModel(), x, a, torch.tensor([0, 0]), 2)
    assert bool(((curves > 0) & (curves < 1)).all())
    with pytest.raises(ValueError, match="one \\(H, W\\) map"):
        degradation_curve(_PixelModel(), x, a[:1], torch.tensor([0, 0]), 2)
    with pytest.raises(ValueError, match="one target per image"):
        degradation_curve(_PixelModel(), x, a, torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="order"):
        degradation_curve(_PixelModel(), x, a, torch.tensor([0, 0]), 2, order="best")
    with pytest.raises(ValueError, match="score"):
        degradation_curve(_PixelModel(), x, a, torch.tensor([0, 0]), 2, score="prob")


def test_area_under_curve():
    steps = torch.arange(5)
    assert area_under_curve(torch.full((1, 5), 0.3), steps).item() == pytest.approx(0.3)
    assert area_under_curve(torch.linspace(1, 0, 5)[None], steps).item() == pytest.approx(0.5)

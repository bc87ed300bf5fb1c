"""Energy-based pointing game of the chest X-ray study on hand-built maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linearlens.metrics.energy_pointing import (
    bootstrap_ci,
    box_masks,
    chance_level,
    epg,
    epg_by_outcome,
    epg_sweep,
    paired_bootstrap,
    recall_epg,
)


def one(boxes, size=(10, 10), k=1, labels=None):
    labels = torch.zeros(len(boxes), dtype=torch.long) if labels is None else torch.tensor(labels)
    return box_masks([torch.tensor(boxes, dtype=torch.float32)], [labels], k, size)


def test_box_mask_uses_pixel_centres():
    m = one([[1.0, 1.0, 3.0, 3.0]], (5, 5))[0, 0]
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[1:3, 1:3] = True
    assert torch.equal(m, expected)
    # x in [0.6, 1.4) holds no pixel centre (0.5, 1.5); [0.4, 1.4) holds column 0's centre
    assert not one([[0.6, 0.0, 1.4, 5.0]], (5, 5)).any()
    assert one([[0.4, 0.0, 1.4, 5.0]], (5, 5))[0, 0, :, 0].all()


def test_overlapping_boxes_are_counted_once():
    boxes = [[0.0, 0.0, 6.0, 6.0], [4.0, 4.0, 10.0, 10.0]]
    masks = one(boxes)
    uniform = torch.ones(1, 1, 10, 10)
    # union area 36 + 36 - 4 = 68 of 100 pixels; summing the two box masks would give 72 / 100
    assert epg(uniform, masks).item() == pytest.approx(0.68)
    assert chance_level(masks).item() == pytest.approx(0.68)


def test_epg_ignores_negative_contributions_and_thresholds_relative_to_the_maximum():
    masks = one([[0.0, 0.0, 2.0, 2.0]])
    m = torch.zeros(1, 1, 10, 10)
    m[0, 0, 0, 0] = 1.0  # inside
    m[0, 0, 1, 1] = -5.0  # inside, negative: not pointing
    m[0, 0, 5:, 5:] = 0.3  # 25 pixels outside
    assert epg(m, masks).item() == pytest.approx(1 / (1 + 25 * 0.3))
    assert epg(m, masks, threshold=0.5).item() == pytest.approx(1.0)  # 0.3 <= 0.5 * max(L+) = 0.5
    assert epg(m, masks, threshold=0.29).item() == pytest.approx(1 / (1 + 25 * 0.3))
    # recall-EPG inside the box: 1 / (1 + |-5|)
    assert recall_epg(m, masks).item() == pytest.approx(1 / 6)
    assert epg(-m.abs(), masks).item() == 0.0  # no positive energy


def test_coarse_maps_are_clamped_then_upsampled_bilinearly():
    masks = one([[0.0, 0.0, 2.0, 2.0]], (4, 4))
    coarse = torch.tensor([[[[1.0, -1.0], [0.0, 0.0]]]])
    # align_corners=False, 2 -> 4: output centres sample source coordinates -0.25, 0.25, 0.75, 1.25, clamped to
    # [0, 1], so the weight of source pixel 0 along an axis is [1, 0.75, 0.25, 0]
    w = torch.tensor([1.0, 0.75, 0.25, 0.0])
    up = torch.outer(w, w)
    expected = up[:2, :2].sum() / up.sum()
    assert epg(coarse, masks).item() == pytest.approx(expected.item())  # 3.0625 / 4
    # upsampling the signed map first would let the -1 cancel part of the +1 near the box
    signed_first = torch.nn.functional.interpolate(coarse, size=(4, 4), mode="bilinear").clamp_min(0)[0, 0]
    assert signed_first[:2, :2].sum() / signed_first.sum() != pytest.approx(expected.item())


def test_sweep_equals_thresholded_scores():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 2, 8, 8, generator=g)
    boxes = [torch.tensor([[1.0, 1.0, 5.0, 6.0]]), torch.tensor([[0.0, 0.0, 8.0, 3.0], [2, 2, 4, 8]]),
             torch.zeros(0, 4)]
    masks = box_masks(boxes, [torch.tensor([0]), torch.tensor([1, 1]), torch.zeros(0, dtype=torch.long)], 2, (8, 8))
    ts = [0.0, 0.3, 0.7]
    sweep = epg_sweep(maps, masks, ts)
    for i, t in enumerate(ts):
        torch.testing.assert_close(sweep[i], epg(maps, masks, t))
    torch.testing.assert_close(epg_sweep(maps, masks, ts, "recall")[1], recall_epg(maps, masks, 0.3))


def test_epg_by_outcome_splits_true_positives_and_false_negatives():
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.7], [0.3, 0.2], [0.8, 0.6]])
    labels = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1]]).float()
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.9], [0.7, 0.9], [0.1, 0.3]])
    thresholds = [0.5, 0.25]
    masks = torch.zeros(4, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2] = masks[0, 1, :1] = masks[1, 0, :] = masks[3, 1, :, :1] = True  # image 2 has no boxes
    out = epg_by_outcome(scores, masks, labels, probabilities, thresholds, n_boot=200)
    # eligible: (0,0) TP, (0,1) FN (0.2 < 0.25), (1,0) FN (0.4 < 0.5), (3,1) TP (0.3 >= 0.25)
    assert out["all"].n == 4 and out["tp"].n == 2 and out["fn"].n == 2
    assert out["tp"].mean == pytest.approx((0.9 + 0.6) / 2) and out["fn"].mean == pytest.approx((0.1 + 0.5) / 2)
    assert out["tp"].chance == pytest.approx((0.5 + 0.25) / 2) and out["fn"].chance == pytest.approx((0.25 + 1) / 2)
    assert out["tp"].low <= out["tp"].mean <= out["tp"].high
    with pytest.raises(ValueError, match="one threshold per finding"):
        epg_by_outcome(scores, masks, labels, probabilities, [0.5])


def test_bootstrap_intervals():
    assert bootstrap_ci(np.full(10, 0.3)) == pytest.approx((0.3, 0.3))
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.5, 0.1, 20), rng.normal(0.5, 0.1, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and (hi_l - lo_l) < (hi_s - lo_s) / 5
    # standard error 0.1 / sqrt(2000): the 95 % interval is about +-1.96 of it
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(2000), rel=0.15)


def test_paired_bootstrap_uses_the_pairing():
    rng = np.random.default_rng(1)
    shared = rng.uniform(0, 1, 60)  # image difficulty dominates the spread
    a, b = shared + 0.05 + rng.normal(0, 0.005, 60), shared
    paired = paired_bootstrap(a, b)
    assert paired.difference == pytest.approx(a.mean() - b.mean())
    assert 0 < paired.low < 0.05 < paired.high < 0.1  # tight and excluding 0
    # the unpaired intervals overlap heavily: without pairing the difference would not be resolved
    lo_a, hi_a = bootstrap_ci(a)
    lo_b, hi_b = bootstrap_ci(b)
    assert lo_a < hi_b
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap(a, b[:-1])


def test_bad_input_is_rejected():
    masks = one([[0.0, 0.0, 2.0, 2.0]], (4, 4))
    with pytest.raises(ValueError, match="larger than the image"):
        epg(torch.ones(1, 1, 8, 8), masks)
    with pytest.raises(ValueError, match="threshold"):
        epg(torch.ones(1, 1, 4, 4), masks, threshold=1.0)
    with pytest.raises(ValueError, match="box labels must lie"):
        box_masks([torch.tensor([[0.0, 0, 1, 1]])], [torch.tensor([3])], 2, (4, 4))

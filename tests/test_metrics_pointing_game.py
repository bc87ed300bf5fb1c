"""Localisation metrics on hand-built maps with known answers, and grid construction properties."""

from __future__ import annotations

import pytest
import torch

from linearlens.metrics import (
    energy_pointing_game,
    energy_pointing_game_sweep,
    grid_pointing_game,
    make_grids,
    pointing_game,
    smooth,
)


def _maps(*grids: list[list[float]]) -> torch.Tensor:
    """(1, K, H, W) maps from nested lists."""
    return torch.tensor(grids, dtype=torch.float32)[None]


# ---- grid pointing game ------------------------------------------------------------------------


def test_all_positive_mass_in_target_cell_scores_one_and_split_scores_half():
    a = torch.zeros(1, 2, 6, 6)
    a[0, 0, 0:3, 3:6] = 1.0  # cell 1 only
    a[0, 1, 0:3, 0:3] = 2.0  # cell 0 and cell 3 equally
    a[0, 1, 3:6, 3:6] = 2.0
    scores = grid_pointing_game(a, 2, torch.tensor([[1, 3]]))
    assert scores.tolist() == [[1.0, 0.5]]


def test_negative_attribution_is_ignored_and_empty_maps_score_zero():
    a = torch.zeros(1, 3, 4, 4)
    a[0, 0, :2, :2] = -5.0  # negative in target cell 0
    a[0, 0, 2:, 2:] = 1.0  # positive in cell 3
    a[0, 1] = -1.0  # nothing positive at all
    a[0, 2, :2, :2] = 3.0
    a[0, 2, :2, 2:] = -100.0  # negative elsewhere does not lower the score
    scores = grid_pointing_game(a, 2, torch.tensor([[0, 0, 0]]))
    assert scores.tolist() == [[0.0, 0.0, 1.0]]


def test_smoothing_spreads_a_corner_pixel_into_neighbouring_cells():
    # A pixel of mass 9 at (2, 2) of a 6x6 map with 3x3 cells: the 3x3 mean filter gives 1 to each
    # of the 9 pixels around it: 4 in cell 0, 2 in cell 1, 2 in cell 2 and 1 in cell 3.
    a = torch.zeros(1, 1, 6, 6)
    a[0, 0, 2, 2] = 9.0
    for cell, expected in enumerate([4 / 9, 2 / 9, 2 / 9, 1 / 9]):
        score = grid_pointing_game(a, 2, torch.tensor([[cell]]), smooth_kernel=3)
        assert score.item() == pytest.approx(expected, abs=1e-6)
    a_center = torch.zeros(1, 1, 6, 6)
    a_center[0, 0, 1, 1] = 9.0
    assert grid_pointing_game(a_center, 2, torch.tensor([[0]]), smooth_kernel=3).item() == pytest.approx(1.0)


def test_smoothing_cancels_fine_negative_noise():
    # Cell 0 (rows 0-2, cols 0-5) is uniformly positive; cell 1 holds zero-mean +1/-1 stripes.
    a = torch.zeros(1, 1, 6, 12)
    a[0, 0, :3, :6] = 1.0
    a[0, 0, :3, 6:] = torch.tensor([1.0, -1.0]).repeat(3)
    raw = grid_pointing_game(a, 2, torch.tensor([[0]]))
    assert raw.item() == pytest.approx(18 / 27)
    smoothed = grid_pointing_game(a, 2, torch.tensor([[0]]), smooth_kernel=3)
    assert smoothed.item() > raw.item() + 0.05


def test_smooth_is_a_mean_filter_in_the_interior():
    a = torch.randn(2, 3, 8, 8)
    s = smooth(a, 3)
    assert s.shape == a.shape
    assert torch.allclose(s[..., 1:-1, 1:-1], torch.nn.functional.avg_pool2d(a.flatten(0, 1)[:, None], 3, 1)
                          .view(2, 3, 6, 6), atol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        smooth(a, 2)


def test_grid_pointing_game_is_batched_elementwise():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, 9, 9, generator=g)
    cells = torch.randint(0, 9, (5, 4), generator=g)
    batch = grid_pointing_game(a, 3, cells, smooth_kernel=3)
    for i in range(5):
        for k in range(4):
            one = grid_pointing_game(a[i : i + 1, k : k + 1], 3, cells[i : i + 1, k : k + 1], smooth_kernel=3)
            assert one.item() == pytest.approx(batch[i, k].item(), abs=1e-6)


def test_grid_pointing_game_rejects_bad_shapes():
    a = torch.rand(2, 1, 9, 9)
    with pytest.raises(ValueError, match="cannot be split"):
        grid_pointing_game(a, 2, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="shape \\(2, 1\\)"):
        grid_pointing_game(a, 3, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="cell indices"):
        grid_pointing_game(a, 3, torch.full((2, 1), 9))
    with pytest.raises(ValueError, match="\\(N, K, H, W\\)"):
        grid_pointing_game(a[0], 3, torch.zeros(2, 1, dtype=torch.long))


# ---- grid construction ------------------------------------------------------------------------


def _pool(classes: int = 10, per_class: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 4, 4).clone()
    confidences = torch.rand(len(labels), generator=g)
    correct = torch.rand(len(labels), generator=g) > 0.2
    return images, labels, confidences, correct


def test_grids_have_distinct_classes_unique_sources_and_take_the_most_confident_first():
    images, labels, conf, correct = _pool()
    grids = make_grids(images, labels, conf, n=2, num_grids=8, generator=torch.Generator().manual_seed(1),
                       correct=correct)
    assert grids.images.shape == (8, 2, 8, 8)
    sources = grids.sources.flatten()
    assert len(set(sources.tolist())) == len(sources), "an image was reused"
    assert bool(correct[sources].all()), "an incorrectly classified image was used"
    assert torch.equal(labels[grids.sources], grids.classes)
    for row in grids.classes:
        assert len(set(row.tolist())) == 4, "classes repeat within a grid"
    for c in range(10):
        used = [int(s) for s in grids.sources.flatten() if labels[s] == c]  # in grid order
        eligible = [i for i in range(len(labels)) if labels[i] == c and correct[i]]
        top = sorted(eligible, key=lambda i: -conf[i].item())[: len(used)]
        assert used == top, f"class {c} did not use its most confident images in order"
    # the cells hold the source images in row-major order
    for gi in range(8):
        for cell in range(4):
            r, col = divmod(cell, 2)
            tile = grids.images[gi, :, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4]
            assert torch.equal(tile, images[grids.sources[gi, cell]])


def test_grid_construction_is_reproducible_and_strict_about_running_out():
    images, labels, conf, correct = _pool()
    a = make_grids(images, labels, conf, 3, 4, torch.Generator().manual_seed(3))
    b = make_grids(images, labels, conf, 3, 4, torch.Generator().manual_seed(3))
    assert torch.equal(a.sources, b.sources)
    with pytest.raises(ValueError, match="only"):
        make_grids(images, labels, conf, 3, 100, torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="only"):
        fewer = make_grids(images, labels, conf, 3, 100, torch.Generator().manual_seed(3), strict=False)
    assert 0 < len(fewer) < 100
    with pytest.raises(ValueError, match="distinct classes"):
        make_grids(images[labels < 3], labels[labels < 3], conf[labels < 3], 2, 1)


# ---- energy-based pointing game ----------------------------------------------------------------


def test_energy_pointing_game_variants_on_a_hand_built_map():
    a = _maps([[2.0, -1.0], [1.0, 0.0]])
    box = torch.tensor([[[True, True], [False, False]]])  # top row
    assert energy_pointing_game(a, box, "energy").item() == pytest.approx(1 / 2)  # (2 - 1) / (2 - 1 + 1)
    assert energy_pointing_game(a, box, "positive").item() == pytest.approx(2 / 3)  # 2 / (2 + 1)
    assert energy_pointing_game(a, box, "recall").item() == pytest.approx(2 / 3)  # 2 / (2 + |-1|)
    # threshold 0.6 of the peak 2 keeps only |a| > 1.2, i.e. the 2
    assert energy_pointing_game(a, box, "positive", threshold=0.6).item() == pytest.approx(1.0)
    assert energy_pointing_game(a, box, "recall", threshold=0.6).item() == pytest.approx(1.0)
    # no positive attribution: 0 rather than NaN
    assert energy_pointing_game(-a.abs(), box, "positive").item() == 0.0


def test_energy_sweep_matches_single_thresholds_and_masks_broadcast():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 5, 5, generator=g)
    boxes = torch.rand(3, 5, 5, generator=g) > 0.5
    sweep = energy_pointing_game_sweep(a, boxes, [0.0, 0.3, 0.7], "recall")
    assert sweep.shape == (3, 3, 2)
    assert torch.allclose(sweep[1], energy_pointing_game(a, boxes, "recall", 0.3))
    per_k = energy_pointing_game(a, boxes[:, None].expand(3, 2, 5, 5), "positive")
    assert torch.allclose(per_k, energy_pointing_game(a, boxes, "positive"))
    # raising the threshold can only keep the strongest values: at a high enough threshold only the peak is left
    top = energy_pointing_game(a, boxes, "positive", threshold=0.999)
    peak_inside = boxes[:, None].expand(3, 2, 5, 5).flatten(2).gather(2, a.abs().flatten(2).argmax(2, keepdim=True))
    peak_positive = a.flatten(2).gather(2, a.abs().flatten(2).argmax(2, keepdim=True)) > 0
    assert torch.equal(top, (peak_inside & peak_positive).squeeze(2).float())


def test_energy_pointing_game_errors():
    a = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="masks must have shape"):
        energy_pointing_game(a, torch.ones(2, 5, 5))
    with pytest.raises(ValueError, match="variant"):
        energy_pointing_game(a, torch.ones(2, 4, 4), "f1")
    with pytest.raises(ValueError, match="threshold"):
        energy_pointing_game(a, torch.ones(2, 4, 4), threshold=1.5)


# ---- pointing game -----------------------------------------------------------------------------


def test_pointing_game_hits_misses_and_tolerance():
    a = torch.zeros(1, 2, 10, 10)
    a[0, 0, 2, 2] = 1.0
    a[0, 1, 8, 8] = 1.0
    box = torch.zeros(1, 10, 10, dtype=torch.bool)
    box[0, 1:4, 1:4] = True
    assert pointing_game(a, box).tolist() == [[True, False]]
    # (8, 8) is sqrt(5^2 + 5^2) ~ 7.07 from the box corner (3, 3)
    assert pointing_game(a, box, tolerance=7.0).tolist() == [[True, False]]
    assert pointing_game(a, box, tolerance=7.1).tolist() == [[True, True]]

"""The energy-based pointing game (EPG) of the chest X-ray study, precisely defined, with its statistics.

Definitions (App. B of the chest X-ray paper; Score-CAM's Eq. (1) with the paper's extensions 1-3).  For
one image, one finding ``k`` with at least one box, and a contribution map ``L`` of that finding:

1. *Positive part*: ``L+ = max(L, 0)`` (extension 1; negative evidence is not "pointing").
2. *Upsampling*: a map coarser than the image (CAM maps at feature resolution) is upsampled to the image
   size with bilinear interpolation, ``align_corners=False`` (pixel centres aligned as ``F.interpolate``
   does), after taking the positive part, so the upsampled map is non-negative.  Maps at image size
   (inherent B-cos maps) are used as they are.
3. *Threshold* (extension 3): values ``<= t * max(L+)`` are set to 0, ``t`` in ``[0, 1)``.
4. *Box mask* ``B``: the union of the image's boxes of finding ``k`` on the pixel grid: pixel
   ``(row i, column j)`` belongs to a box ``(x1, y1, x2, y2)`` when its centre ``(j + ½, i + ½)`` lies in
   ``[x1, x2) x [y1, y2)``; overlapping boxes are counted once (a union, not a sum).
5. ``EPG = sum(L+ ⊙ B) / sum(L+)`` (Eq. (2)); a map without positive energy scores 0.
6. *Recall-EPG* (Eq. (3)) on the signed (upsampled) map, thresholded by magnitude:
   ``sum(L+ ⊙ B) / (sum(L+ ⊙ B) + sum(|L-| ⊙ B))``.
7. *Chance level*: the share of the image the mask covers, ``mean(B)`` — the EPG of a uniform map.

Statistics are over the (image, finding) pairs whose label is positive and which have a box:
:func:`epg_by_outcome` splits them at the decision threshold chosen on validation data into true
positives (score >= threshold) and false negatives; :func:`bootstrap_ci` and :func:`paired_bootstrap`
give percentile intervals (pairs resampled together when comparing two variants on the same images).
Per-map scores come from :func:`linearlens.metrics.pointing_game.energy_pointing_game`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from linearlens.metrics.pointing_game import energy_pointing_game

__all__ = [
    "box_masks", "prepare_maps", "epg", "recall_epg", "chance_level", "epg_sweep", "EpgSummary",
    "epg_by_outcome", "summarise_pairs", "bootstrap_ci", "PairedBootstrap", "paired_bootstrap",
]


def box_masks(
    boxes: Sequence[Tensor], box_labels: Sequence[Tensor], num_classes: int, size: tuple[int, int]
) -> Tensor:
    """``(N, K, H, W)`` bool: per image and finding the union of its boxes (pixel-centre rule, step 4)."""
    if len(boxes) != len(box_labels):
        raise ValueError(f"{len(boxes)} box lists for {len(box_labels)} label lists")
    h, w = size
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    masks = torch.zeros(len(boxes), num_classes, h, w, dtype=torch.bool)
    for i, (b, lab) in enumerate(zip(boxes, box_labels)):
        b = torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4)
        lab = torch.as_tensor(lab, dtype=torch.long).reshape(-1)
        if len(b) != len(lab):
            raise ValueError(f"image {i}: {len(b)} boxes but {len(lab)} box labels")
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise ValueError(f"image {i}: box labels must lie in [0, {num_classes}), got {lab.tolist()}")
        for (x1, y1, x2, y2), k in zip(b.tolist(), lab.tolist()):
            rows = (ys >= y1) & (ys < y2)
            cols = (xs >= x1) & (xs < x2)
            masks[i, k] |= rows[:, None] & cols[None, :]
    return masks


def _check(maps: Tensor, masks: Tensor) -> None:
    if not isinstance(maps, Tensor) or maps.dim() != 4 or not maps.is_floating_point():
        raise ValueError(f"maps must be a floating (N, K, h, w) tensor, got {getattr(maps, 'shape', type(maps))}")
    if masks.dim() != 4 or masks.shape[:2] != maps.shape[:2]:
        raise ValueError(f"masks must have shape (N, K, H, W) with (N, K) = {tuple(maps.shape[:2])}, "
                         f"got {tuple(masks.shape)}")
    h, w = maps.shape[-2:]
    if h > masks.shape[-2] or w > masks.shape[-1]:
        raise ValueError(f"maps ({h}x{w}) are larger than the image ({masks.shape[-2]}x{masks.shape[-1]})")


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    n, k, h, w = maps.shape
    return F.interpolate(maps.reshape(n * k, 1, h, w), size=size, mode="bilinear", align_corners=False).reshape(
        n, k, *size)


def prepare_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Steps 1-2: the positive part of ``(N, K, h, w)`` maps, upsampled bilinearly to ``size``."""
    return _upsample(maps.clamp_min(0), size)


def epg(maps: Tensor, masks: Tensor, threshold: float = 0.0) -> Tensor:
    """EPG (steps 1-5, Eq. (2)) of every map, ``(N, K)``."""
    _check(maps, masks)
    return energy_pointing_game(prepare_maps(maps, masks.shape[-2:]), masks, "positive", threshold)


def recall_epg(maps: Tensor, masks: Tensor, threshold: float = 0.0) -> Tensor:
    """Recall-EPG (step 6, Eq. (3)) of every map, ``(N, K)``; 0 where the box holds no energy."""
    _check(maps, masks)
    return energy_pointing_game(_upsample(maps, masks.shape[-2:]), masks, "recall", threshold)


def chance_level(masks: Tensor) -> Tensor:
    """Step 7: the share of the image covered by each mask, ``(N, K)``."""
    return masks.flatten(2).float().mean(2)


def epg_sweep(maps: Tensor, masks: Tensor, thresholds: Sequence[float], variant: str = "epg") -> Tensor:
    """``(T, N, K)`` scores at each saliency threshold (Fig. 3); ``variant`` is ``"epg"`` or ``"recall"``."""
    if variant not in ("epg", "recall"):
        raise ValueError(f"variant must be 'epg' or 'recall', got {variant!r}")
    fn = epg if variant == "epg" else recall_epg
    return torch.stack([fn(maps, masks, float(t)) for t in thresholds])


def bootstrap_ci(values: Tensor | np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` interval of the mean of ``values`` (NaN, NaN when empty)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return float("nan"), float("nan")
    means = v[np.random.default_rng(seed).integers(0, v.size, (n_boot, v.size))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


@dataclass(frozen=True)
class EpgSummary:
    """Mean score over ``n`` (image, finding) pairs with its bootstrap interval and the chance level."""

    mean: float
    low: float
    high: float
    chance: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _summary(scores: Tensor, chance: Tensor, seed: int, n_boot: int) -> EpgSummary:
    if scores.numel() == 0:
        return EpgSummary(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    low, high = bootstrap_ci(scores.double().numpy(), n_boot=n_boot, seed=seed)
    return EpgSummary(float(scores.double().mean()), low, high, float(chance.double().mean()), scores.numel())


def summarise_pairs(
    scores: Tensor, chance: Tensor, predicted: Tensor, n_boot: int = 2000, seed: int = 0
) -> dict[str, EpgSummary]:
    """``{"all", "tp", "fn"}`` summaries of flat per-pair ``scores`` with their ``chance`` levels, split by
    the boolean ``predicted`` (the pair's finding predicted positive: a true positive, else a false negative)."""
    scores, chance = scores.reshape(-1).cpu(), chance.reshape(-1).cpu()
    predicted = predicted.reshape(-1).bool().cpu()
    if not scores.shape == chance.shape == predicted.shape:
        raise ValueError("scores, chance and predicted must have one entry per pair")
    groups = {"all": torch.ones_like(predicted), "tp": predicted, "fn": ~predicted}
    return {name: _summary(scores[sel], chance[sel], seed, n_boot) for name, sel in groups.items()}


def epg_by_outcome(
    scores: Tensor, masks: Tensor, labels: Tensor, probabilities: Tensor, thresholds: Tensor | Sequence[float],
    n_boot: int = 2000, seed: int = 0,
) -> dict[str, EpgSummary]:
    """EPG summaries ``{"all", "tp", "fn"}`` over positive (image, finding) pairs that have a box.

    ``scores`` are per-map scores ``(N, K)`` (from :func:`epg` or :func:`recall_epg`), ``probabilities``
    the model's ``(N, K)`` scores and ``thresholds`` the ``K`` decision thresholds chosen on validation
    data: a pair is a true positive when its probability is ``>=`` its finding's threshold.
    """
    n, k = scores.shape
    if masks.shape[:2] != (n, k) or labels.shape != (n, k) or probabilities.shape != (n, k):
        raise ValueError(f"scores, masks, labels and probabilities must agree on (N, K) = {(n, k)}")
    thr = torch.as_tensor(thresholds, dtype=probabilities.dtype).reshape(-1)
    if thr.numel() != k:
        raise ValueError(f"need one threshold per finding ({k}), got {thr.numel()}")
    chance = chance_level(masks)
    eligible = (labels > 0.5) & (chance > 0)
    predicted = probabilities >= thr
    return summarise_pairs(scores[eligible], chance[eligible], predicted[eligible], n_boot, seed)


@dataclass(frozen=True)
class PairedBootstrap:
    """Means of two variants on the same pairs and the bootstrap interval of their difference ``a - b``."""

    mean_a: float
    mean_b: float
    difference: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_bootstrap(
    a: Tensor | np.ndarray, b: Tensor | np.ndarray, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> PairedBootstrap:
    """Percentile bootstrap of ``mean(a) - mean(b)`` resampling the pairs ``(a_i, b_i)`` together.

    Use it to compare two explanation variants scored on the same (image, finding) pairs: the interval
    excludes 0 when the difference is unlikely to be resampling noise.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have equal length, got {a.size} and {b.size}")
    low, high = bootstrap_ci(a - b, n_boot, alpha, seed)
    if a.size == 0:
        return PairedBootstrap(float("nan"), float("nan"), float("nan"), low, high, 0)
    return PairedBootstrap(float(a.mean()), float(b.mean()), float((a - b).mean()), low, high, a.size)

"""Localisation metrics: the grid pointing game, the energy-based pointing game and the pointing game.

All are plain functions on tensors, batched over images ``N`` and explained outputs ``K``:
``attributions`` are ``(N, K, H, W)`` maps such as :attr:`linearlens.explain.Explanation.attributions`.

* Grid pointing game (Böhle et al., used in Sec. 4 and App. C.2.1 of the B-cos paper):
  :func:`make_grids` builds ``n x n`` grids of the most confidently (and correctly) classified
  images of distinct classes; :func:`grid_pointing_game` scores the share of positive attribution
  that falls into the cell of the explained class.
* Energy-based pointing game (Score-CAM; Eqs. (1)-(3) of App. B of the chest X-ray paper) with its
  positive-only (precision) and recall variants and a saliency threshold.
* Pointing game (Zhang et al.): does the maximum of the map fall into the object?
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Grids", "make_grids", "grid_pointing_game", "smooth", "energy_pointing_game",
    "energy_pointing_game_sweep", "pointing_game", "EPG_VARIANTS",
]


def _check_maps(attributions: Tensor, name: str = "attributions") -> Tensor:
    if not isinstance(attributions, Tensor):
        raise TypeError(f"{name} must be a tensor of shape (N, K, H, W), got {type(attributions).__name__}")
    if attributions.dim() != 4:
        raise ValueError(f"{name} must have shape (N, K, H, W), got {tuple(attributions.shape)}")
    if not attributions.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {attributions.dtype}")
    if not torch.isfinite(attributions).all():
        raise ValueError(f"{name} hold NaN or Inf values; a localisation score of them would be meaningless")
    return attributions


# --------------------------------------------------------------------------------------------------
# grid pointing game


@dataclass
class Grids:
    """``n x n`` grid images and where each cell came from.

    Attributes:
        images: ``(G, C, n H, n W)`` grid images, same dtype as the source images.
        classes: ``(G, n * n)`` class of each cell, cells in row-major order.
        sources: ``(G, n * n)`` index of each cell's image in the source set.
        n: cells per side.
    """

    images: Tensor
    classes: Tensor
    sources: Tensor
    n: int

    def __len__(self) -> int:
        return self.images.shape[0]


def make_grids(
    images: Tensor,
    labels: Tensor,
    confidences: Tensor,
    n: int = 3,
    num_grids: int = 500,
    generator: torch.Generator | None = None,
    correct: Tensor | None = None,
    strict: bool = True,
) -> Grids:
    """Build grid images as in App. C.2.1 of the B-cos paper.

    Images are ranked per class by ``confidences`` (highest first); only those with ``correct``
    true are eligible (``None``: all).  Each grid draws ``n * n`` distinct classes uniformly at
    random among the classes with unused images left and, for each, takes that class's most
    confident image not used in an earlier grid; the random order of the drawn classes is the cell
    order.  With ``strict=True`` a ``ValueError`` is raised when fewer than ``num_grids`` grids can
    be built; otherwise as many as possible are returned with a warning.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    count = images.shape[0]
    if labels.shape != (count,) or confidences.shape != (count,):
        raise ValueError(
            f"labels and confidences must have shape ({count},), got {tuple(labels.shape)} and "
            f"{tuple(confidences.shape)}"
        )
    if correct is not None and correct.shape != (count,):
        raise ValueError(f"correct must have shape ({count},), got {tuple(correct.shape)}")
    if n < 1 or num_grids < 1:
        raise ValueError(f"need n >= 1 and num_grids >= 1, got n={n}, num_grids={num_grids}")
    cells = n * n
    eligible = torch.ones(count, dtype=torch.bool) if correct is None else correct.bool().cpu()
    labels_cpu, conf_cpu = labels.cpu().long(), confidences.detach().cpu().float()
    queues: dict[int, list[int]] = {}
    for c in labels_cpu[eligible].unique().tolist():
        idx = torch.nonzero(eligible & (labels_cpu == c)).flatten()
        order = torch.sort(conf_cpu[idx], descending=True, stable=True).indices
        queues[c] = idx[order].tolist()
    if len(queues) < cells:
        raise ValueError(f"a {n}x{n} grid needs {cells} distinct classes, but only {len(queues)} have eligible images")
    used = dict.fromkeys(queues, 0)
    grid_classes, grid_sources = [], []
    for _ in range(num_grids):
        available = [c for c in sorted(queues) if used[c] < len(queues[c])]
        if len(available) < cells:
            break
        pick = torch.randperm(len(available), generator=generator)[:cells].tolist()
        classes = [available[i] for i in pick]
        sources = []
        for c in classes:
            sources.append(queues[c][used[c]])
            used[c] += 1
        grid_classes.append(classes)
        grid_sources.append(sources)
    made = len(grid_sources)
    if made < num_grids:
        message = f"only {made} of the requested {num_grids} {n}x{n} grids can be built from these images"
        if strict:
            raise ValueError(message + " (pass strict=False to accept fewer)")
        warnings.warn(message, UserWarning, stacklevel=2)
        if made == 0:
            raise ValueError(message)
    sources_t = torch.tensor(grid_sources, dtype=torch.long)
    tiles = images[sources_t.to(images.device)]  # (G, n*n, C, H, W)
    g, _, c, h, w = tiles.shape
    grid_images = tiles.view(g, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(g, c, n * h, n * w)
    return Grids(grid_images, torch.tensor(grid_classes, dtype=torch.long), sources_t, n)


def smooth(attributions: Tensor, kernel: int) -> Tensor:
    """``kernel x kernel`` mean filter (stride 1, same size, borders averaged over the valid pixels).

    Sec. 4 of the B-cos paper smooths non-perturbation maps so that isolated negative attributions
    next to positive ones cancel (3 x 3 for CIFAR-10, 15 x 15 for ImageNet).
    """
    _check_maps(attributions)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the smoothing kernel must be a positive odd size, got {kernel}")
    if kernel == 1:
        return attributions
    n, k, h, w = attributions.shape
    flat = attributions.reshape(n * k, 1, h, w)
    out = F.avg_pool2d(flat, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    return out.view(n, k, h, w)


def grid_pointing_game(
    attributions: Tensor, grid_size: int, target_cells: Tensor, smooth_kernel: int | None = None
) -> Tensor:
    """Share of positive attribution in the correct cell, ``(N, K)`` (grid pointing game, Sec. 4).

    ``attributions[i, k]`` explains the class of cell ``target_cells[i, k]`` (row-major index into
    the ``grid_size x grid_size`` grid) of grid image ``i``.  Maps are first smoothed with a
    ``smooth_kernel`` mean filter if given.  A map without positive attribution scores 0.
    """
    _check_maps(attributions)
    n_img, k, h, w = attributions.shape
    if grid_size < 1 or h % grid_size or w % grid_size:
        raise ValueError(f"a {h}x{w} map cannot be split into a {grid_size}x{grid_size} grid of equal cells")
    target_cells = torch.as_tensor(target_cells, device=attributions.device)
    if target_cells.dim() == 1:
        target_cells = target_cells[:, None]
    if target_cells.shape != (n_img, k):
        raise ValueError(
            f"target_cells must have shape ({n_img}, {k}) to match the maps, got {tuple(target_cells.shape)}"
        )
    if target_cells.is_floating_point() or bool(((target_cells < 0) | (target_cells >= grid_size**2)).any()):
        raise ValueError(f"target_cells must be integer cell indices in [0, {grid_size**2})")
    if smooth_kernel:
        attributions = smooth(attributions, smooth_kernel)
    positive = attributions.clamp_min(0)
    ch, cw = h // grid_size, w // grid_size
    per_cell = positive.reshape(n_img, k, grid_size, ch, grid_size, cw).sum((3, 5)).flatten(2)
    total = per_cell.sum(2)
    hit = per_cell.gather(2, target_cells.long()[..., None]).squeeze(2)
    return torch.where(total > 0, hit / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


# --------------------------------------------------------------------------------------------------
# energy-based pointing game and pointing game

EPG_VARIANTS = ("energy", "positive", "recall")


def _check_masks(attributions: Tensor, masks: Tensor) -> Tensor:
    _check_maps(attributions)
    masks = torch.as_tensor(masks, device=attributions.device)
    if masks.dim() == 3:
        masks = masks[:, None]
    if masks.dim() != 4 or masks.shape[-2:] != attributions.shape[-2:] or masks.shape[0] != attributions.shape[0]:
        raise ValueError(
            f"masks must have shape (N, H, W) or (N, K, H, W) matching the maps {tuple(attributions.shape)}, "
            f"got {tuple(masks.shape)}"
        )
    if masks.shape[1] not in (1, attributions.shape[1]):
        raise ValueError(f"masks have {masks.shape[1]} maps per image but attributions have {attributions.shape[1]}")
    return masks.to(attributions.dtype) if masks.dtype == torch.bool else (masks != 0).to(attributions.dtype)


def _threshold(attributions: Tensor, threshold: float) -> Tensor:
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold is a fraction of each map's largest magnitude in [0, 1), got {threshold}")
    if threshold == 0:
        return attributions
    peak = attributions.abs().amax((2, 3), keepdim=True)
    return torch.where(attributions.abs() > threshold * peak, attributions, torch.zeros_like(attributions))


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))


def energy_pointing_game(
    attributions: Tensor, masks: Tensor, variant: str = "positive", threshold: float = 0.0
) -> Tensor:
    """Energy-based pointing game scores ``(N, K)`` (App. B of the chest X-ray paper).

    With ``L`` the map, ``B`` the binary box mask and ``L+``/``L-`` its positive/negative parts:

    * ``"energy"`` (Eq. (1), Score-CAM): ``sum(L ⊙ B) / sum(L)``;
    * ``"positive"`` (Eq. (2), precision): ``sum(L+ ⊙ B) / sum(L+)``;
    * ``"recall"`` (Eq. (3)): ``sum(L+ ⊙ B) / (sum(L+ ⊙ B) + sum(|L-| ⊙ B))``.

    ``threshold`` (extension 3) keeps only values whose magnitude exceeds that fraction of the
    map's largest magnitude.  An undefined ratio (zero denominator) scores 0.
    """
    masks = _check_masks(attributions, masks)
    if variant not in EPG_VARIANTS:
        raise ValueError(f"variant must be one of {EPG_VARIANTS}, got {variant!r}")
    a = _threshold(attributions, threshold)
    pos = a.clamp_min(0)
    if variant == "energy":
        return _ratio((a * masks).sum((2, 3)), a.sum((2, 3)))
    inside = (pos * masks).sum((2, 3))
    if variant == "positive":
        return _ratio(inside, pos.sum((2, 3)))
    negative_inside = ((-a).clamp_min(0) * masks).sum((2, 3))
    return _ratio(inside, inside + negative_inside)


def energy_pointing_game_sweep(
    attributions: Tensor, masks: Tensor, thresholds: Tensor | list[float], variant: str = "positive"
) -> Tensor:
    """:func:`energy_pointing_game` at each saliency threshold, ``(T, N, K)``."""
    return torch.stack([energy_pointing_game(attributions, masks, variant, float(t)) for t in thresholds])


def pointing_game(attributions: Tensor, masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """Pointing game hits ``(N, K)`` (bool): the map's maximum lies within ``tolerance`` pixels of the mask.

    Zhang et al. use a tolerance of 15 pixels; ties go to the first maximum in row-major order.
    """
    masks = _check_masks(attributions, masks).expand_as(attributions) > 0
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    n, k, h, w = attributions.shape
    flat = attributions.reshape(n, k, -1).argmax(2)
    py, px = (flat // w).float(), (flat % w).float()
    yy = torch.arange(h, device=attributions.device, dtype=torch.float32).view(1, 1, h, 1)
    xx = torch.arange(w, device=attributions.device, dtype=torch.float32).view(1, 1, 1, w)
    near = (yy - py[..., None, None]) ** 2 + (xx - px[..., None, None]) ** 2 <= tolerance**2
    return (near & masks).flatten(2).any(2)

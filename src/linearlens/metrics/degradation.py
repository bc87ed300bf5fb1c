"""Pixel-flipping / image-degradation curves (Samek et al., 2016; Sec. 5 of the PatternNet paper).

The image is split into non-overlapping ``patch_size`` patches; patches are ranked by the sum of
the attribution inside them, most relevant first (MoRF), least relevant first (LeRF) or at random;
at step ``s`` the first ``s`` patches are replaced by their mean per colour channel and the model's
score for the explained class is recorded.  A steeper MoRF decay (and a flatter LeRF one) means a
better map.  Everything is batched over images and steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "patch_ids", "patch_ranking", "degrade", "degradation_curve", "area_under_curve", "aopc", "ORDERS",
]

ORDERS = ("morf", "lerf", "random")


def patch_ids(size: tuple[int, int], patch_size: int, device: torch.device | None = None) -> Tensor:
    """Patch index of every pixel, ``(H, W)``, row-major; border patches may be smaller."""
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    h, w = size
    rows = torch.arange(h, device=device) // patch_size
    cols = torch.arange(w, device=device) // patch_size
    return rows[:, None] * math.ceil(w / patch_size) + cols[None, :]


def _patch_sums(values: Tensor, ids: Tensor, patches: int) -> Tensor:
    """Sum of ``values (N, C, H, W)`` per patch, ``(N, C, P)``."""
    n, c = values.shape[:2]
    out = values.new_zeros(n, c, patches)
    return out.scatter_add_(2, ids.flatten().expand(n, c, -1), values.flatten(2))


def patch_ranking(
    attributions: Tensor, patch_size: int, order: str = "morf", generator: torch.Generator | None = None
) -> Tensor:
    """Rank of every patch, ``(N, P)``: 0 is removed first. ``attributions`` are ``(N, H, W)`` maps."""
    if attributions.dim() != 3:
        raise ValueError(f"attributions must be one map per image, (N, H, W), got {tuple(attributions.shape)}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    ids = patch_ids(tuple(attributions.shape[-2:]), patch_size, attributions.device)
    patches = int(ids.max()) + 1
    relevance = _patch_sums(attributions[:, None].float(), ids, patches)[:, 0]
    if order == "random":
        keys = torch.rand(relevance.shape, generator=generator).to(relevance.device)
    else:
        keys = relevance if order == "lerf" else -relevance
    position = torch.sort(keys, dim=1, stable=True).indices
    ranks = torch.arange(patches, device=keys.device).expand_as(position)
    return torch.empty_like(position).scatter_(1, position, ranks)


def degrade(images: Tensor, ranks: Tensor, steps: Tensor, patch_size: int) -> Tensor:
    """Degraded copies ``(N, S, C, H, W)``: at step ``steps[j]`` the patches ranked below it hold their mean colour."""
    ids = patch_ids(tuple(images.shape[-2:]), patch_size, images.device)
    patches = int(ids.max()) + 1
    if ranks.shape != (images.shape[0], patches):
        raise ValueError(f"ranks must have shape ({images.shape[0]}, {patches}), got {tuple(ranks.shape)}")
    counts = torch.bincount(ids.flatten(), minlength=patches).to(images.dtype)
    means = _patch_sums(images, ids, patches) / counts
    mean_image = means[..., ids]  # (N, C, H, W): each pixel replaced by its patch mean
    pixel_rank = ranks[:, ids]  # (N, H, W)
    removed = pixel_rank[:, None] < steps.to(images.device).view(1, -1, 1, 1)  # (N, S, H, W)
    return torch.where(removed[:, :, None], mean_image[:, None], images[:, None])


def degradation_curve(
    forward: Callable[[Tensor], Tensor],
    images: Tensor,
    attributions: Tensor,
    targets: Tensor,
    patch_size: int = 9,
    steps: int | Tensor | None = None,
    order: str = "morf",
    score: str = "softmax",
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Scores of the explained classes while patches are removed; returns ``(curves (N, S), steps (S,))``.

    ``forward`` maps images ``(B, C, H, W)`` to class scores ``(B, classes)``; ``score`` turns those
    into the tracked value (``"softmax"`` as in the PatternNet paper, ``"sigmoid"`` or ``"logit"``).
    ``steps`` is the number of patches removed at each point: ``None`` for ``0, 1, ..., P``, an int
    for that many evenly spaced points from 0 to ``P``, or a tensor of counts.
    """
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if attributions.dim() == 4 and attributions.shape[1] == 1:
        attributions = attributions[:, 0]
    if attributions.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"attributions must be one (H, W) map per image, {(images.shape[0], *images.shape[-2:])}, "
            f"got {tuple(attributions.shape)}"
        )
    if not torch.isfinite(images).all() or not torch.isfinite(attributions).all():
        raise ValueError("images and attributions must be finite (they hold NaN or Inf values)")
    targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"need one target per image ({images.shape[0]}), got {targets.shape[0]}")
    scorers = {"softmax": lambda y: y.softmax(1), "sigmoid": torch.sigmoid, "logit": lambda y: y}
    if score not in scorers:
        raise ValueError(f"score must be one of {sorted(scorers)}, got {score!r}")
    patches = int(patch_ids(tuple(images.shape[-2:]), patch_size).max()) + 1
    if steps is None:
        step_t = torch.arange(patches + 1)
    elif isinstance(steps, int):
        if steps < 2:
            raise ValueError(f"steps must be >= 2 points, got {steps}")
        step_t = torch.linspace(0, patches, steps).round().long()
    else:
        step_t = torch.as_tensor(steps).long()
    ranks = patch_ranking(attributions, patch_size, order, generator)
    n, s = images.shape[0], step_t.numel()
    per_image = max(1, batch_size // s)
    curves = []
    with torch.no_grad():
        for start in range(0, n, per_image):
            sl = slice(start, start + per_image)
            batch = degrade(images[sl], ranks[sl], step_t, patch_size)
            b = batch.shape[0]
            out = scorers[score](forward(batch.flatten(0, 1))).view(b, s, -1)
            if start == 0 and (targets.min() < 0 or targets.max() >= out.shape[-1]):
                raise ValueError(f"target class out of range for a model with {out.shape[-1]} outputs")
            curves.append(out.gather(2, targets[sl].view(b, 1, 1).expand(b, s, 1))[..., 0])
    return torch.cat(curves), step_t


def area_under_curve(curves: Tensor, steps: Tensor) -> Tensor:
    """Normalised area under each curve, ``(N,)``: the trapezoid mean over the removed fraction in [0, 1]."""
    if curves.shape[-1] != steps.numel():
        raise ValueError(f"curves have {curves.shape[-1]} points but steps has {steps.numel()}")
    x = steps.to(curves.dtype) / steps.max().clamp_min(1)
    return torch.trapezoid(curves, x, dim=-1) / (x[-1] - x[0]).clamp_min(torch.finfo(curves.dtype).tiny)


def aopc(curves: Tensor) -> Tensor:
    """Area over the perturbation curve (Samek et al., 2016), ``(N,)``: the mean over the recorded steps
    ``k = 0..L`` of ``f(x^(0)) - f(x^(k))``; larger means the ranking removed what mattered sooner."""
    return (curves[:, :1] - curves).mean(-1)

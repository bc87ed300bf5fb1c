"""The evaluation harness: explanation methods x a metric on a model and an image set.

Used by ``linearlens evaluate`` and by the experiments, so that every reported number comes from
one implementation.  The metrics themselves are the plain tensor functions of
:mod:`.pointing_game` and :mod:`.degradation`; this module only feeds them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..explain import explain
from ..figures import save_figure, subplots
from .degradation import degradation_curve
from .pointing_game import Grids, grid_pointing_game, make_grids

__all__ = [
    "classify", "build_grids", "grid_pointing_scores", "degradation_scores", "summarize", "box_plot",
]


def _as_float(images: Tensor) -> Tensor:
    return images.float().div(255) if images.dtype == torch.uint8 else images


@torch.no_grad()
def classify(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Logits ``(N, classes)`` of ``images`` (uint8 or float in [0, 1]), computed in batches."""
    return torch.cat([model(_as_float(images[i : i + batch_size])) for i in range(0, len(images), batch_size)])


def build_grids(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    n: int = 3,
    num_grids: int = 500,
    seed: int = 0,
    strict: bool = False,
    batch_size: int = 256,
    require_correct: bool = True,
) -> tuple[Grids, float]:
    """Grids from the correctly classified images, most confident first (App. C.2.1 of the B-cos paper).

    Confidence is the softmax probability of the labelled class.  ``require_correct=False`` admits
    misclassified images too (only for smoke tests of untrained models).  Returns the grids (float
    images in [0, 1]) and the model's accuracy on ``images``.
    """
    logits = classify(model, images, batch_size)
    correct = logits.argmax(1) == labels
    confidence = logits.softmax(1).gather(1, labels[:, None])[:, 0]
    eligible = correct if require_correct else None
    grids = make_grids(images, labels, confidence, n, num_grids, torch.Generator().manual_seed(seed), eligible, strict)
    grids.images = _as_float(grids.images)
    return grids, float(correct.float().mean())


def grid_pointing_scores(
    model: nn.Module,
    grids: Grids,
    method: str,
    options: dict[str, Any] | None = None,
    smooth_kernel: int | None = 3,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[Tensor, float]:
    """Grid pointing game scores ``(G, n * n)`` of ``method`` and the seconds spent per grid image.

    Each grid is explained for the class of every cell (``K = n * n`` targets, batched over grids);
    maps of non-perturbation methods are smoothed with ``smooth_kernel`` (Sec. 4 of the B-cos paper).
    """
    options = options or {}
    cells = torch.arange(grids.n**2).expand(len(grids), -1)
    scores, seconds = [], 0.0
    for start in tqdm(range(0, len(grids), batch_size), desc=method, disable=not progress, leave=False):
        sl = slice(start, start + batch_size)
        t0 = time.perf_counter()
        e = explain(model, grids.images[sl], grids.classes[sl], method=method, **options)
        seconds += time.perf_counter() - t0
        kernel = None if e.meta.get("perturbation") else smooth_kernel
        scores.append(grid_pointing_game(e.attributions, grids.n, cells[sl], kernel))
    return torch.cat(scores), seconds / len(grids)


def degradation_scores(
    model: nn.Module,
    images: Tensor,
    method: str,
    options: dict[str, Any] | None = None,
    patch_size: int = 4,
    steps: int | None = 17,
    order: str = "morf",
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Tensor, Tensor, float]:
    """Degradation curves of the predicted class for ``method``: ``(curves (N, S), steps (S,), seconds/image)``."""
    options = options or {}
    generator = torch.Generator().manual_seed(seed)
    curves, seconds = [], 0.0
    step_t = torch.zeros(0)
    for start in tqdm(range(0, len(images), batch_size), desc=method, disable=not progress, leave=False):
        x = _as_float(images[start : start + batch_size])
        t0 = time.perf_counter()
        e = explain(model, x, "predicted", method=method, **options)
        seconds += time.perf_counter() - t0
        c, step_t = degradation_curve(
            model, x, e.attributions[:, 0], e.targets[:, 0], patch_size, steps, order, generator=generator
        )
        curves.append(c)
    return torch.cat(curves), step_t, seconds / len(images)


def summarize(scores: Tensor) -> dict[str, float]:
    """Mean, median, quartiles, standard deviation and count of a set of scores."""
    s = scores.flatten().double()
    q = torch.quantile(s, torch.tensor([0.25, 0.5, 0.75], dtype=s.dtype))
    return {
        "mean": float(s.mean()), "median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]),
        "std": float(s.std()) if s.numel() > 1 else 0.0, "n": int(s.numel()),
    }


def box_plot(results: dict[str, Tensor], path: str | Path, title: str, ylabel: str) -> Path:
    """A box plot (PNG) of one score distribution per entry of ``results``, in order."""
    names: Sequence[str] = list(results)
    fig, ax = subplots(figsize=(max(4.0, 0.8 * len(names) + 1.5), 3.6))
    ax.boxplot([results[k].flatten().numpy() for k in names], showmeans=True, whis=(5, 95), showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


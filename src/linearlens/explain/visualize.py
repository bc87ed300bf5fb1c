"""Pictures of explanations: the colour image decoded from ``W(x)`` and signed contribution maps.

Follows "Visualisation details" in Sec. 4 of the B-cos paper.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..figures import save_figure, subplots
from .explanation import Explanation

__all__ = ["weights_to_rgba", "contribution_heatmap", "explanation_panels", "save_explanation_grid"]


def weights_to_rgba(weights: Tensor, inputs: Tensor, percentile: float = 99.5) -> Tensor:
    """Decode 6-channel rows of ``W(x)`` into RGBA images (Sec. 4, "Visualisation details").

    Only pixels that contribute positively (``sum_c w * x > 0``, Eq. (15)) are shown.  Each
    channel pair ``(c, 1-c)`` is normalised to sum to one, which keeps the pair's angle and gives a
    colour in ``[0, 1]``; negative weights are clipped to zero first so that the pair's sum is a
    positive amount of evidence.  The opacity is ``min(||w||_2 / p, 1)`` with ``p`` the
    ``percentile`` of the weight norms over the image.

    Args:
        weights: ``(..., 6, H, W)`` rows of ``W(x)`` for the encoded input ``[r, g, b, 1-r, 1-g, 1-b]``.
        inputs: the encoded input, broadcastable to ``weights``.

    Returns:
        ``(..., H, W, 4)`` float RGBA in ``[0, 1]``.
    """
    if weights.shape[-3] != 6:
        raise ValueError(
            f"colour decoding needs rows for the 6-channel encoding [r, g, b, 1-r, 1-g, 1-b], got "
            f"{weights.shape[-3]} channels; use contribution_heatmap for other inputs"
        )
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    w = weights.detach().float()
    contribution = (w * inputs.detach().float()).sum(-3)
    positive = w.clamp_min(0)
    pair_sum = positive[..., :3, :, :] + positive[..., 3:, :, :]
    rgb = torch.where(pair_sum > 0, positive[..., :3, :, :] / pair_sum.clamp_min(1e-12), torch.full_like(pair_sum, 0.5))
    norm = torch.linalg.vector_norm(w, dim=-3)
    flat = norm.flatten(-2)
    scale = torch.quantile(flat, percentile / 100, dim=-1, keepdim=True).unsqueeze(-1).clamp_min(1e-12)
    alpha = (norm / scale).clamp(max=1.0) * (contribution > 0)
    return torch.cat([rgb.movedim(-3, -1), alpha.unsqueeze(-1)], dim=-1)


def contribution_heatmap(attribution: Tensor, percentile: float = 99.5) -> np.ndarray:
    """A signed map as an RGB array: red positive, blue negative, symmetric about zero."""
    import matplotlib

    a = attribution.detach().float().cpu().numpy()
    limit = float(np.percentile(np.abs(a), percentile)) or 1.0
    cmap = matplotlib.colormaps["bwr"]
    return cmap(np.clip(a / limit, -1, 1) * 0.5 + 0.5)[..., :3]


def explanation_panels(
    explanation: Explanation, image_index: int = 0, class_names: Sequence[str] | None = None
) -> list[tuple[str, list[tuple[np.ndarray, str]]]]:
    """The pictures of one image's explanation, grouped per explained output.

    Returns ``[(name, [(array, title), ...]), ...]``: per explained output its name and its
    panels, the decoded ``W(x)`` (6-channel linear explanations only) and the signed contribution
    map, as ``(H, W, 3|4)`` float arrays in ``[0, 1]``.
    """
    i = image_index
    k = explanation.attributions.shape[1]
    colour = explanation.weights is not None and explanation.weights.shape[2] == 6
    rgba = weights_to_rgba(explanation.weights[i], explanation.inputs[i].unsqueeze(0)) if colour else None
    groups = []
    for j in range(k):
        name = f"output {j}"
        if explanation.targets is not None:
            target = int(explanation.targets[i, j])
            name = class_names[target] if class_names is not None and 0 <= target < len(class_names) else str(target)
        panels = []
        if rgba is not None:
            panels.append((rgba[j].cpu().numpy(), f"W(x): {name}"))
        panels.append((contribution_heatmap(explanation.attributions[i, j]), f"contrib.: {name}"))
        groups.append((name, panels))
    return groups


def save_explanation_grid(
    path: str | os.PathLike,
    images: Tensor | Sequence[Tensor],
    explanation: Explanation | Sequence[Explanation],
    labels: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    outputs_per_row: int | None = None,
) -> Path:
    """Save a PNG grid: per image a block whose first cell is the image, followed, per explained
    output, by the decoded ``W(x)`` (6-channel linear explanations) and the signed contribution map.

    A block wraps after ``outputs_per_row`` explained outputs (default 4 with colour panels, 8
    without), so that ten classes make three readable rows instead of one 21-panel strip.
    ``images`` is an ``(N, C, H, W)`` batch or a list of ``(C, H, W)`` images of any sizes;
    ``explanation`` covers all of them, or is a list with one single-image explanation per image
    (how images of different sizes are explained, each at its own size).
    """
    images = list(images) if not isinstance(images, Tensor) else list(images.unbind(0))
    explanations = list(explanation) if isinstance(explanation, (list, tuple)) else None
    if explanations is not None and len(explanations) != len(images):
        raise ValueError(f"got {len(images)} images but {len(explanations)} explanations")
    if explanations is None and len(explanation) != len(images):
        raise ValueError(f"got {len(images)} images but an explanation of {len(explanation)}")
    blocks = []
    for i, image in enumerate(images):
        exp, index = (explanations[i], 0) if explanations is not None else (explanation, i)
        blocks.append((image, explanation_panels(exp, index, class_names)))
    per_output = max(len(groups[0][1]) for _, groups in blocks)
    per_row = outputs_per_row or (4 if per_output == 2 else 8)
    if per_row < 1:
        raise ValueError(f"outputs_per_row must be >= 1, got {per_row}")
    widest = max(len(groups) for _, groups in blocks)
    columns = 1 + per_output * min(widest, per_row)
    layout = [(-(-len(groups) // per_row)) for _, groups in blocks]
    fig, axes = subplots(sum(layout), columns, figsize=(1.6 * columns, 1.75 * sum(layout)), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    top = 0
    for i, ((image, groups), rows) in enumerate(zip(blocks, layout)):
        ax = axes[top, 0]
        ax.axis("on")
        ax.imshow(image.detach().float().permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        h, w = image.shape[-2:]
        ax.set_title((labels[i] if labels else f"image {i}") + f" ({w}x{h})", fontsize=7)
        for j, (_, panels) in enumerate(groups):
            row, slot = top + j // per_row, j % per_row
            for p, (array, title) in enumerate(panels):
                cell = axes[row, 1 + per_output * slot + p]
                cell.axis("on")
                cell.imshow(array)
                cell.set_title(title, fontsize=7)
        top += rows
    return save_figure(fig, path)

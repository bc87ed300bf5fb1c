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

from ..figures import pyplot, save_figure
from .explanation import Explanation

__all__ = ["weights_to_rgba", "contribution_heatmap", "save_explanation_grid"]


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


def save_explanation_grid(
    path: str | os.PathLike,
    images: Tensor,
    explanation: Explanation,
    labels: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a PNG with one row per image: the image, then per explained output the decoded ``W(x)``
    (for 6-channel linear explanations) and the signed contribution map."""
    plt = pyplot()
    n, k = explanation.attributions.shape[:2]
    colour = explanation.weights is not None and explanation.weights.shape[2] == 6
    per_target = 2 if colour else 1
    fig, axes = plt.subplots(n, 1 + per_target * k, figsize=(1.6 * (1 + per_target * k), 1.7 * n), squeeze=False)
    rgba = weights_to_rgba(explanation.weights, explanation.inputs.unsqueeze(1)) if colour else None
    for i in range(n):
        axes[i, 0].imshow(images[i].detach().float().permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        axes[i, 0].set_title(labels[i] if labels else f"image {i}", fontsize=7)
        for j in range(k):
            name = str(int(explanation.targets[i, j])) if explanation.targets is not None else f"output {j}"
            if class_names is not None and explanation.targets is not None:
                name = class_names[int(explanation.targets[i, j])]
            col = 1 + per_target * j
            if rgba is not None:
                axes[i, col].imshow(rgba[i, j].cpu().numpy())
                axes[i, col].set_title(f"W(x): {name}", fontsize=7)
                col += 1
            axes[i, col].imshow(contribution_heatmap(explanation.attributions[i, j]))
            axes[i, col].set_title(f"contrib.: {name}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return save_figure(fig, path)

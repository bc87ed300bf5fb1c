"""Figures of the linear-interpreter paper: layer-wise contributions (Fig. 4) and pixel votes (Fig. 3).

matplotlib is imported when a figure is drawn, not with the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ..figures import save_figure, subplots
from .decomposition import PixelDiscussion, pixel_votes

__all__ = ["contribution_bars", "pixel_vote_grid", "signed_image"]


def signed_image(t: Tensor):
    """A signed map ``(C, H, W)`` or ``(H, W)`` scaled to ``[0, 1]`` with 0 at 0.5, as a channels-last array."""
    t = t.detach().double().cpu()
    out = (0.5 + 0.5 * t / t.abs().max().clamp_min(1e-12)).clamp(0, 1)
    return (out.permute(1, 2, 0) if out.dim() == 3 else out).numpy()


def contribution_bars(ax, table: Tensor, columns: Sequence[str], title: str = "") -> None:
    """Fig. 4: mean +- std over images of the normalised contributions ``table`` ``(N, 2 + G)``.

    ``table`` and ``columns`` come from :meth:`BiasContributions.table` (one explained score per image).
    """
    table = table.detach().cpu()
    mean = table.mean(0).numpy()
    std = table.std(0).numpy() if table.shape[0] > 1 else 0 * mean
    colours = ["tab:green"] + ["tab:blue"] * (len(columns) - 2) + ["grey"]
    ax.bar(range(len(columns)), mean, yerr=std, color=colours, capsize=3)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(columns)), ["F(x0)x0" if c == "input" else c for c in columns], rotation=45)
    ax.set_ylabel("contribution / score")
    if title:
        ax.set_title(title, fontsize=9)


def pixel_vote_grid(
    images: Tensor, discussion: PixelDiscussion, class_names: Sequence[str], path: str | Path, title: str = "",
    labels: Sequence[str] | None = None,
) -> dict:
    """Fig. 3: per image, the pixel discussions of the two top scores and the pixels voting for each.

    ``discussion`` must explain every class (``target="all"``) so that the votes compare all classes.
    Returns, per image, the top-2 classes with their scores and vote shares.
    """
    votes = pixel_votes(discussion)
    order = discussion.scores.argsort(1, descending=True)
    n = images.shape[0]
    fig, axes = subplots(n, 5, figsize=(10, 2.2 * n), squeeze=False)
    summary = []
    for r in range(n):
        img = images[r].detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
        axes[r, 0].imshow(img, interpolation="nearest")
        axes[r, 0].set_title(labels[r] if labels else f"image {r}", fontsize=8)
        entry: dict = {}
        for j in range(2):
            k = int(order[r, j])
            cls = int(discussion.targets[r, k])
            axes[r, 1 + j].imshow(signed_image(discussion.discussions[r, k]), cmap="bwr", vmin=0, vmax=1,
                                  interpolation="nearest")
            axes[r, 1 + j].set_title(f"PD {class_names[cls]} ({float(discussion.scores[r, k]):.1f})", fontsize=8)
            mask = (votes[r] == cls).to(images.dtype)
            dimmed = (images[r].detach().cpu() * (0.15 + 0.85 * mask.cpu())).clamp(0, 1).permute(1, 2, 0)
            axes[r, 3 + j].imshow(dimmed.numpy(), interpolation="nearest")  # pixels voting elsewhere dimmed
            share = float(mask.mean())
            axes[r, 3 + j].set_title(f"votes {class_names[cls]}: {share:.0%}", fontsize=8)
            entry[f"top{j + 1}"] = {"class": class_names[cls], "score": float(discussion.scores[r, k]),
                                    "vote_share": share}
        summary.append(entry)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle(title or "pixel discussions (Eq. 18; red +, blue -) and pixel votes", fontsize=8)
    save_figure(fig, path, dpi=130)
    return {"images": summary, "votes": votes}


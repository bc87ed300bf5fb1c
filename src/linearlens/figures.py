"""Figures written without touching process-wide matplotlib state.

Every figure is a :class:`matplotlib.figure.Figure` with its own Agg canvas: no ``matplotlib.use``,
no ``pyplot`` (whose global figure registry and backend switch would change the state of the
caller's process, e.g. a Jupyter session's inline backend).  matplotlib is imported when a figure
is drawn, not with the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["subplots", "save_figure"]


def subplots(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, **kwargs
) -> tuple[Any, Any]:
    """``(figure, axes)`` like ``pyplot.subplots``, but on a private Agg canvas (nothing global changes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out ``fig`` and write it to ``path`` (creating folders) as PNG; returns the path.

    The PNG is written to a temporary name in the same folder and moved into place, so an
    interrupted or failed save never leaves a truncated image behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

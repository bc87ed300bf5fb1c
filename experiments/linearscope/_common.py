"""Helpers shared by the LinearScope demonstrations: paths, data checks and image display."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from linearlens.training.checkpoint import read_safetensors, replace_atomically

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
FIGURES = ROOT / "docs" / "figures" / "linearscope"
RUNS = ROOT / "runs" / "linearscope"


def require(path: Path, what: str) -> Path:
    """Exit with a clear message (status 2) when the data a demonstration needs is absent."""
    if not path.exists():
        print(f"error: {what} not found at {path} (expected ../shared/data relative to the repository root); "
              "this demonstration needs the real data and does not download anything", file=sys.stderr)
        sys.exit(2)
    return path


def signed(t: torch.Tensor, scale: float | None = None) -> np.ndarray:
    """A signed image (C, H, W) or (H, W) mapped to [0, 1] around 0.5, for display of filters and vectors."""
    t = t.detach().double()
    s = float(t.abs().max()) if scale is None else scale
    out = 0.5 + 0.5 * t / max(s, 1e-12)
    out = out.clamp(0, 1)
    return out.permute(1, 2, 0).numpy() if out.dim() == 3 else out.numpy()


def rgb(t: torch.Tensor) -> np.ndarray:
    """An image tensor (3, H, W) in [0, 1] as an (H, W, 3) array."""
    return t.detach().clamp(0, 1).permute(1, 2, 0).double().numpy()


def psnr(a: torch.Tensor, b: torch.Tensor, border: int = 0) -> float:
    """Peak signal-to-noise ratio for images in [0, 1], ignoring ``border`` pixels."""
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = float(((a.clamp(0, 1) - b) ** 2).mean())
    return 10 * np.log10(1.0 / mse)


def command_line() -> str:
    """The command that produced a figure, as shown in the docs."""
    args = " ".join(sys.argv[1:])
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return f"python {script}" + (f" {args}" if args else "")


def save_weights(path: Path, model: nn.Module, info: dict) -> None:
    """The model's weights as safetensors (no pickle), ``info`` as JSON metadata, written atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    replace_atomically(path, lambda p: save_file(tensors, str(p), metadata={"info": json.dumps(info)}))


def load_weights(path: Path, model: nn.Module) -> dict:
    """Load weights written by :func:`save_weights` into ``model``; returns the stored ``info``."""
    tensors, metadata = read_safetensors(require(path, f"checkpoint {path.name} (train it first)"))
    model.load_state_dict(tensors)
    return json.loads(metadata.get("info", "{}"))

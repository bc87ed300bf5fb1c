"""Checks of user input shared by the explanation, interpretation and training entry points."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_images"]


def check_images(x: object, name: str = "x") -> Tensor:
    """Raise a clear error unless ``x`` is a non-empty, finite, floating-point ``(N, C, H, W)`` batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0): nothing to explain")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (images in [0, 1]), got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x

"""Checks of user input shared by the explanation, interpretation and training entry points."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["check_images", "check_input_dtype"]


def check_images(x: object, name: str = "x") -> Tensor:
    """Raise a clear error unless ``x`` is a non-empty, finite, floating-point ``(N, C, H, W)`` batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (N = 0): nothing to explain")
    if x.numel() == 0:
        raise ValueError(f"{name} has an empty dimension, shape {tuple(x.shape)}: there is no image to explain")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (images in [0, 1]), got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_input_dtype(model: nn.Module, x: Tensor, name: str = "x") -> Tensor:
    """Raise a clear error when ``x``'s floating dtype differs from the model's floating parameters."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if isinstance(x, Tensor) and x.is_floating_point() and dtypes and x.dtype not in dtypes:
        have = ", ".join(sorted(str(d) for d in dtypes))
        raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {have}; convert one of them "
                        f"(e.g. x.to({sorted(str(d) for d in dtypes)[0]}) or model.to(x.dtype))")
    return x

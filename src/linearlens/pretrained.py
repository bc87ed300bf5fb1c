"""The pretrained CIFAR-10 B-cos network shipped inside the package (no download, no training).

``_embedded/pretrained_bcos_cifar10/`` holds ``model.safetensors`` and ``config.json`` in the layout of a
``linearlens train`` run directory; its provenance (recipe, CPU-seconds, test accuracy on the 10,000
CIFAR-10 test images) is in ``_embedded/README.md`` and in the ``config.json`` itself.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .models import load_checkpoint
from .safefiles import read_json

__all__ = ["PRETRAINED_DIR", "load_pretrained", "pretrained_info"]

PRETRAINED_DIR = Path(__file__).resolve().parent / "_embedded" / "pretrained_bcos_cifar10"


def load_pretrained() -> nn.Module:
    """The shipped CIFAR-10 B-cos network (``bcos_cifar``, App. C.1.1), in eval mode.

    It takes ``(N, 3, H, W)`` RGB images in [0, 1] (it applies AddInverse itself) and returns 10 logits in
    the class order of :data:`linearlens.data.CIFAR10_CLASSES`.
    """
    if not (PRETRAINED_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(f"the pretrained network is missing from this installation ({PRETRAINED_DIR})")
    return load_checkpoint(PRETRAINED_DIR)


def pretrained_info() -> dict:
    """The shipped network's ``config.json``: model arguments, recipe and measured accuracy."""
    return read_json(PRETRAINED_DIR / "config.json")

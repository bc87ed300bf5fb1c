"""The study's networks: B-cos ResNets with strided / BlurPool / FLC downsampling and a conventional ResNet.

B-cos variants come from the model registry (``bcos_resnet18`` / ``bcos_resnet50`` with ``antialias``
``None`` / ``"blurpool"`` / ``"flc"``, ``multi_label=True``: one sigmoid output per finding, the paper's
multi-label extension, Sec. 3.1).  The baseline is torchvision's ResNet with a one-channel stem and ``K``
outputs.  The output bias starts at the training prevalence's log-odds so that the first epochs do not
spend themselves learning the class balance.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from torch import nn

from linearlens.models import create_model
from linearlens.xray.config import StudyConfig

__all__ = ["build_model", "is_bcos"]

_ANTIALIAS = {"strided": None, "blurpool": "blurpool", "flc": "flc"}


def is_bcos(variant: str) -> bool:
    return variant != "baseline"


def build_model(variant: str, config: StudyConfig, num_classes: int, prevalence: float = 0.5) -> nn.Module:
    """A fresh network of ``variant`` (optionally loading ``config.pretrained[variant]``)."""
    prevalence = min(max(prevalence, 1e-3), 1 - 1e-3)
    bias = math.log(prevalence / (1 - prevalence))
    if is_bcos(variant):
        model = create_model(
            f"bcos_{config.backbone}", num_classes=num_classes, in_channels=1, width=config.width,
            antialias=_ANTIALIAS[variant], multi_label=True, design=config.design, logit_bias=bias,
        )
    else:
        model = getattr(torchvision.models, config.backbone)(weights=None, num_classes=num_classes)
        model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        with torch.no_grad():
            model.fc.bias.fill_(bias)
    path = config.pretrained.get(variant)
    if path:
        _load_pretrained(model, Path(path), variant)
    return model


def _load_pretrained(model: nn.Module, path: Path, variant: str) -> None:
    """Copy every tensor of a local state dict whose name and shape match (the head and stem may differ)."""
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights for {variant} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: no tensor matches the {variant} network by name and shape")
    model.load_state_dict(usable, strict=False)

"""Training one network of the study on one fold's training patients (App. C.3 of the chest X-ray paper).

Binary cross-entropy on the sigmoid outputs (for the binary task one output: the same model as the
paper's two-way softmax with cross-entropy, whose logit difference it is), Adam with weight decay,
``ReduceLROnPlateau`` on the validation loss (factor 0.1, ``patience``), optional App. C.2 augmentation and
minority oversampling.  The weights of the epoch with the lowest validation loss are kept.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from linearlens.data.xray import AugmentedXrays, LightAugmentation, MinorityOversampler, XraySet

__all__ = ["FitSettings", "fit", "predict_logits"]


@dataclass
class FitSettings:
    epochs: int
    lr: float
    weight_decay: float
    patience: int
    batch_size: int
    augment: bool
    oversample: bool
    translate: float
    seed: int
    device: str = "cpu"


@torch.no_grad()
def predict_logits(model: nn.Module, data: XraySet, batch_size: int = 64, device: str = "cpu") -> Tensor:
    """``(N, K)`` logits of ``model`` (eval mode) on ``data``'s images scaled to ``[0, 1]``."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        x = data.images[start:start + batch_size].to(device).float() / 255
        out.append(model(x).float().cpu())
    return torch.cat(out)


def fit(model: nn.Module, train: XraySet, val: XraySet, settings: FitSettings, desc: str = "train",
        progress: bool = True) -> dict[str, list[float]]:
    """Train ``model`` in place; returns the per-epoch history (train loss, val loss, learning rate)."""
    generator = torch.Generator().manual_seed(settings.seed)
    transform = LightAugmentation(translate=settings.translate, generator=generator) if settings.augment else None
    sampler = MinorityOversampler(train.labels, generator=generator) if settings.oversample else None
    loader = DataLoader(AugmentedXrays(train, transform), batch_size=settings.batch_size, sampler=sampler,
                        shuffle=sampler is None, generator=generator if sampler is None else None, drop_last=False)
    model.to(settings.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=settings.patience)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "lr": []}
    best, best_state = math.inf, None
    bar = tqdm(range(settings.epochs), desc=desc, leave=False, disable=not progress)
    for _ in bar:
        model.train()
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(settings.device), y.to(settings.device)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(x), count + len(x)
        val_loss = float(F.binary_cross_entropy_with_logits(
            predict_logits(model, val, device=settings.device), val.labels))
        scheduler.step(val_loss)
        history["train_loss"].append(total / max(count, 1))
        history["val_loss"].append(val_loss)
        history["lr"].append(optimizer.param_groups[0]["lr"])
        bar.set_postfix(train=f"{total / max(count, 1):.3f}", val=f"{val_loss:.3f}")
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history

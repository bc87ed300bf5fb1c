"""Settings of the chest X-ray study and its presets (``paper``: GPU protocol; ``cpu``: 2-core scale; ``quick``).

``paper`` is the protocol of Sec. 4.1 / App. C.3 of the chest X-ray paper: B-cos ResNet-50 (v2 design) in
strided, BlurPool and FLC variants plus a conventional ResNet-50, 224 px, Adam with ReduceLROnPlateau
(patience 3), 30 epochs at batch 16, lr 1e-5 (B-cos) / 1e-4 (baseline), weight decay 1e-3, 5 patient folds.
The paper fine-tunes ImageNet weights; ``pretrained`` names a local file per variant when the user has them
(nothing is downloaded).  ``cpu`` trains a ResNet-18-sized B-cos network at a quarter of the width from
scratch at 128 px, with auxiliary pretraining on the NIH pneumonia-vs-no-finding labels of the fold's
training patients; ``quick`` is a toy size for tests and smoke runs on the embedded 48-image subset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["StudyConfig", "PRESETS", "preset", "VARIANTS", "BCOS_METHODS", "BASELINE_METHODS"]

#: ``baseline`` is a conventional ResNet; the others are B-cos ResNets with that downsampling.
VARIANTS = ("baseline", "strided", "blurpool", "flc")
BCOS_METHODS = ("inherent", "layercam", "gradcam")
BASELINE_METHODS = ("layercam", "gradcam")


@dataclass
class StudyConfig:
    """Everything that defines one study run (written to the report)."""

    preset: str = "cpu"
    data: str = "../shared/data/nih-cxr14-subset256"  # or "embedded"
    task: str = "rsna"  # "rsna": binary lung opacity; "nih": NIH findings with >= min_positives positives
    min_positives: int = 30
    size: int = 128
    backbone: str = "resnet18"  # resnet18 / resnet50 (B-cos: bcos_<backbone>; baseline: torchvision)
    width: float = 0.25  # B-cos channel width factor
    design: str = "v2"
    variants: tuple[str, ...] = VARIANTS
    folds: int = 5
    run_folds: tuple[int, ...] | None = None  # train and test only these folds of the main table (None: all)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 12
    aux_epochs: int = 4  # auxiliary NIH pneumonia-vs-no-finding pretraining, 0 = off
    batch_size: int = 16
    lr_bcos: float = 1e-3
    lr_baseline: float = 1e-3
    weight_decay: float = 1e-3
    patience: int = 3
    augment: bool = True
    oversample: bool = True
    translate: float = 18.0  # App. C.2's 32 px at 224 px, scaled to the image size
    threshold_rule: str = "youden"
    epg_min_auroc: float = 0.75
    sweep: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    ablation: bool = True  # Tab. 1: augmentation x oversampling on one fold x ablation_seeds
    ablation_fold: int = 0
    ablation_seeds: tuple[int, ...] = (0, 1)
    ablation_variants: tuple[str, ...] = ("baseline", "strided")
    artifact_stride: int = 32
    panels: int = 6
    n_boot: int = 2000
    threads: int | None = 1
    device: str = "cpu"
    pretrained: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """One-line ``ValueError`` for settings that cannot run."""
        unknown = [v for v in (*self.variants, *self.ablation_variants) if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
        if self.task not in ("rsna", "nih"):
            raise ValueError(f"task must be 'rsna' or 'nih', got {self.task!r}")
        if self.folds < 2 or self.epochs < 1 or self.batch_size < 1 or self.size < 32:
            raise ValueError("need folds >= 2, epochs >= 1, batch_size >= 1 and size >= 32")
        if self.backbone not in ("resnet18", "resnet50"):
            raise ValueError(f"backbone must be resnet18 or resnet50, got {self.backbone!r}")
        if not 0 <= self.ablation_fold < self.folds:
            raise ValueError(f"ablation_fold must lie in [0, {self.folds}), got {self.ablation_fold}")
        if self.run_folds is not None and not all(0 <= f < self.folds for f in self.run_folds):
            raise ValueError(f"run_folds must lie in [0, {self.folds}), got {list(self.run_folds)}")
        unknown = [v for v in self.pretrained if v not in VARIANTS]
        if unknown:
            raise ValueError(f"pretrained weights for unknown variants {unknown}; known: {', '.join(VARIANTS)}")


PRESETS: dict[str, StudyConfig] = {
    "paper": StudyConfig(
        preset="paper", size=224, backbone="resnet50", width=1.0, epochs=30, aux_epochs=0, batch_size=16,
        lr_bcos=1e-5, lr_baseline=1e-4, weight_decay=1e-3, patience=3, translate=32.0, threads=None, device="cuda",
    ),
    "cpu": StudyConfig(preset="cpu"),
    "quick": StudyConfig(
        preset="quick", data="embedded", min_positives=7, size=64, width=0.125, folds=2, epochs=1, aux_epochs=1,
        batch_size=8, translate=9.0, sweep=(0.0, 0.5), ablation_seeds=(0,), artifact_stride=16, panels=2, n_boot=200,
    ),
}


def preset(name: str, **overrides: Any) -> StudyConfig:
    """A copy of preset ``name`` with ``overrides`` applied and validated."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    config = replace(PRESETS[name], **overrides)
    config.validate()
    return config

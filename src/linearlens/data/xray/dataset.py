"""In-memory chest X-ray sets (:class:`XraySet`) and the loaders that build them from the released formats.

:func:`load_nih`, :func:`load_rsna` and :func:`load_vindr` parse the annotation file(s) (see
:mod:`.nih`, :mod:`.rsna`, :mod:`.vindr`), read every listed image from ``images_dir`` and, with ``size``,
resize it to ``size x size`` and rescale its boxes per axis, so boxes are always in pixel coordinates of
``XraySet.images``.  Box convention: ``(x1, y1, x2, y2)`` with ``x`` the column, covering the continuous
area ``[x1, x2) x [y1, y2)``; pixel ``(row i, column j)`` covers ``[j, j+1) x [i, i+1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from linearlens.data.xray.nih import NIH_FINDINGS, read_nih
from linearlens.data.xray.pixels import DICOM_SUFFIXES, read_radiograph, resize_image
from linearlens.data.xray.records import ImageRecord, PathLike
from linearlens.data.xray.rsna import RSNA_FINDINGS, read_rsna
from linearlens.data.xray.vindr import VINDR_FINDINGS, read_vindr

__all__ = ["XraySet", "assemble", "load_nih", "load_rsna", "load_vindr"]

MISSING = ("error", "skip")


@dataclass
class XraySet:
    """Radiographs with multi-hot labels and boxes.

    Attributes:
        images: ``(N, 1, H, W)`` uint8.
        labels: ``(N, K)`` float32 multi-hot over ``classes``.
        classes: the ``K`` finding names.
        boxes: per image a ``(M_i, 4)`` float32 tensor of ``(x1, y1, x2, y2)`` in pixels of ``images``.
        box_labels: per image a ``(M_i,)`` int64 tensor, index into ``classes`` of each box.
        patient_ids, image_ids: per image.
    """

    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    boxes: list[Tensor]
    box_labels: list[Tensor]
    patient_ids: tuple[str, ...]
    image_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 1 or self.images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 of shape (N, 1, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (n, len(self.classes)):
            raise ValueError(f"labels must have shape ({n}, {len(self.classes)}), got {tuple(self.labels.shape)}")
        for name in ("boxes", "box_labels", "patient_ids", "image_ids"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} must have one entry per image ({n}), got {len(getattr(self, name))}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return tuple(self.images.shape[-2:])

    def subset(self, indices: Sequence[int] | Tensor | np.ndarray) -> XraySet:
        """The images at ``indices`` (in that order)."""
        idx = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
        return XraySet(
            self.images[idx], self.labels[idx], self.classes, [self.boxes[i] for i in idx],
            [self.box_labels[i] for i in idx], tuple(self.patient_ids[i] for i in idx),
            tuple(self.image_ids[i] for i in idx),
        )

    def select_classes(self, names: Sequence[str]) -> XraySet:
        """Keep only the findings ``names`` (labels columns and their boxes), in that order."""
        unknown = [n for n in names if n not in self.classes]
        if unknown:
            raise ValueError(f"unknown findings {unknown}; this set has {list(self.classes)}")
        cols = [self.classes.index(n) for n in names]
        remap = torch.full((len(self.classes),), -1, dtype=torch.long)
        remap[cols] = torch.arange(len(cols))
        boxes, box_labels = [], []
        for b, lab in zip(self.boxes, self.box_labels):
            new = remap[lab]
            boxes.append(b[new >= 0])
            box_labels.append(new[new >= 0])
        return XraySet(self.images, self.labels[:, cols], tuple(names), boxes, box_labels,
                       self.patient_ids, self.image_ids)


def assemble(
    records: Sequence[ImageRecord],
    classes: Sequence[str],
    image_path: Callable[[ImageRecord], Path],
    size: int | None = None,
    missing: str = "error",
) -> XraySet:
    """Read and resize the images of ``records``; multi-hot labels over ``classes``; boxes rescaled.

    Without ``size`` all images must already share one shape.  ``missing="skip"`` drops records whose image
    file does not exist (e.g. a partial download); ``"error"`` raises ``FileNotFoundError``.
    """
    if missing not in MISSING:
        raise ValueError(f"missing must be one of {MISSING}, got {missing!r}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    images, kept, boxes, box_labels = [], [], [], []
    for record in records:
        path = image_path(record)
        if not path.is_file():
            if missing == "skip":
                continue
            raise FileNotFoundError(f"image of {record.image_id} not found: {path} (missing='skip' drops such rows)")
        pixels = read_radiograph(path)
        h, w = pixels.shape
        if size is not None:
            pixels = resize_image(pixels, size)
        elif images and pixels.shape != images[0].shape:
            raise ValueError(f"{path}: shape {pixels.shape} differs from {images[0].shape}; pass size= to resize")
        sy, sx = pixels.shape[0] / h, pixels.shape[1] / w
        images.append(pixels)
        kept.append(record)
        boxes.append(torch.tensor([[b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy] for b in record.boxes],
                                  dtype=torch.float32).reshape(-1, 4))
        box_labels.append(torch.tensor([classes.index(b.finding) for b in record.boxes], dtype=torch.long))
    if not images:
        raise ValueError("no images: every record's image file is missing")
    labels = torch.tensor([[float(c in r.findings) for c in classes] for r in kept], dtype=torch.float32)
    return XraySet(
        torch.from_numpy(np.stack(images))[:, None], labels.reshape(len(kept), len(classes)), tuple(classes),
        boxes, box_labels, tuple(r.patient_id for r in kept), tuple(r.image_id for r in kept),
    )


def _dicom_path(images_dir: Path) -> Callable[[ImageRecord], Path]:
    def path(record: ImageRecord) -> Path:
        for suffix in DICOM_SUFFIXES:
            candidate = images_dir / f"{record.image_id}{suffix}"
            if candidate.is_file():
                return candidate
        return images_dir / f"{record.image_id}{DICOM_SUFFIXES[0]}"

    return path


def load_nih(
    entries_csv: PathLike, images_dir: PathLike, bbox_csv: PathLike | None = None, *, size: int | None = None,
    missing: str = "error",
) -> XraySet:
    """NIH ChestX-ray14: ``images_dir/<Image Index>`` PNGs, the 14 findings of :data:`NIH_FINDINGS`."""
    records = read_nih(entries_csv, bbox_csv)
    return assemble(list(records.values()), NIH_FINDINGS, lambda r: Path(images_dir) / r.image_id, size, missing)


def load_rsna(
    labels_csv: PathLike, images_dir: PathLike, *, size: int | None = None, missing: str = "error"
) -> XraySet:
    """RSNA Pneumonia: ``images_dir/<patientId>.dcm``, one class "Lung Opacity"."""
    records = read_rsna(labels_csv)
    return assemble(list(records.values()), RSNA_FINDINGS, _dicom_path(Path(images_dir)), size, missing)


def load_vindr(
    annotations_csv: PathLike, images_dir: PathLike, *, size: int | None = None, merge: str = "union",
    min_votes: int = 1, iou: float = 0.5, missing: str = "error",
) -> XraySet:
    """VinBigData / VinDr-CXR: ``images_dir/<image_id>.dicom`` (or ``.dcm``), 14 findings, readers merged."""
    records = read_vindr(annotations_csv, merge, min_votes, iou)
    return assemble(list(records.values()), VINDR_FINDINGS, _dicom_path(Path(images_dir)), size, missing)

"""The real NIH ChestX-ray14 subset: ``../shared/data/nih-cxr14-subset256`` or the copy embedded in the package.

The shared folder holds 980 frontal radiographs (256 px PNG, 670 patients) with ``labels.csv`` (the 14 NIH
findings, patient ids), ``bboxes.csv`` (33 NIH boxes) and ``rsna_boxes.csv`` (RSNA lung-opacity labels and
boxes for 327 of the images); its README gives the provenance.  ``linearlens/_embedded/xray_subset.npz``
holds 48 of them at 128 px (see ``_embedded/README.md`` and ``scripts/make_embedded_xray.py``), so tests and
the demo run without ``../shared``.

Tasks:

``"rsna"``
    binary RSNA lung opacity (the paper's pneumonia task): only the images with RSNA labels, class
    ``"Lung Opacity"``, RSNA boxes.
``"nih"``
    the 14 NIH findings, multi-label, NIH boxes (use :meth:`XraySet.select_classes` to keep the findings
    with enough positives).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from linearlens.data.xray.dataset import XraySet
from linearlens.data.xray.nih import NIH_FINDINGS
from linearlens.data.xray.pixels import read_png, resize_image
from linearlens.data.xray.records import PathLike, XrayFormatError, parse_float
from linearlens.data.xray.rsna import RSNA_FINDINGS

__all__ = ["SHARED_SUBSET", "EMBEDDED_XRAY_FILE", "SubsetTable", "read_subset_table", "load_xray_subset", "TASKS"]

SHARED_SUBSET = Path("../shared/data/nih-cxr14-subset256")
EMBEDDED_XRAY_FILE = "xray_subset.npz"
TASKS = ("rsna", "nih")
_BOX_SOURCES = ("nih", "rsna")


@dataclass
class SubsetTable:
    """The subset as flat arrays: what the embedded ``.npz`` stores, one key per field.

    ``rsna_target`` is 1 / 0 for images with RSNA labels and -1 otherwise; box ``j`` lies on image
    ``box_image[j]``, comes from ``box_source[j]`` ("nih" or "rsna"), names ``box_finding[j]`` and is
    ``box_xyxy[j]`` in pixels of ``images``.
    """

    images: np.ndarray  # (N, H, W) uint8
    image_ids: np.ndarray  # (N,) str
    patient_ids: np.ndarray  # (N,) str
    nih_labels: np.ndarray  # (N, 14) uint8 over NIH_FINDINGS
    rsna_target: np.ndarray  # (N,) int8
    box_image: np.ndarray  # (M,) int64
    box_source: np.ndarray  # (M,) str
    box_finding: np.ndarray  # (M,) str
    box_xyxy: np.ndarray  # (M, 4) float32

    def subset(self, indices: np.ndarray) -> SubsetTable:
        """The images at ``indices`` with their boxes."""
        indices = np.asarray(indices, dtype=np.int64)
        position = np.full(len(self.image_ids), -1, dtype=np.int64)
        position[indices] = np.arange(len(indices))
        keep = position[self.box_image] >= 0
        order = np.argsort(position[self.box_image[keep]], kind="stable")
        return SubsetTable(
            self.images[indices], self.image_ids[indices], self.patient_ids[indices], self.nih_labels[indices],
            self.rsna_target[indices], position[self.box_image[keep]][order], self.box_source[keep][order],
            self.box_finding[keep][order], self.box_xyxy[keep][order],
        )


def _rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return [(reader.line_num, row) for row in reader]


def read_subset_table(root: PathLike = SHARED_SUBSET, size: int | None = None) -> SubsetTable:
    """Read the shared folder (``labels.csv``, ``bboxes.csv``, ``rsna_boxes.csv``, ``images/``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} not found: the NIH subset lives in ../shared/data/nih-cxr14-subset256 relative to the project "
            "root (not part of the repository); source='embedded' loads the 48-image copy shipped with the package"
        )
    index, images, image_ids, patients, labels = {}, [], [], [], []
    scale = {}
    for line, row in _rows(root / "labels.csv"):
        name = row["image"]
        pixels = read_png(root / "images" / name)
        h, w = pixels.shape
        if size is not None:
            pixels = resize_image(pixels, size)
        where = f"{root / 'labels.csv'}:{line}"
        scale[name] = (pixels.shape[1] / parse_float(row["orig_w"], "orig_w", where),
                       pixels.shape[0] / parse_float(row["orig_h"], "orig_h", where))
        index[name] = len(images)
        images.append(pixels)
        image_ids.append(name)
        patients.append(row["patient_id"])
        labels.append([int(row[f] == "1") for f in NIH_FINDINGS])
    rsna = np.full(len(images), -1, dtype=np.int8)
    box_image, box_source, box_finding, box_xyxy = [], [], [], []

    def add_box(source: str, name: str, finding: str, row: dict[str, str], where: str) -> None:
        x, y, w, h = (parse_float(row[f"{c}_orig"], c, where) for c in "xywh")
        sx, sy = scale[name]
        box_image.append(index[name])
        box_source.append(source)
        box_finding.append(finding)
        box_xyxy.append([x * sx, y * sy, (x + w) * sx, (y + h) * sy])

    for line, row in _rows(root / "bboxes.csv"):
        where = f"{root / 'bboxes.csv'}:{line}"
        if row["image"] not in index:
            raise XrayFormatError(f"{where}: box for unknown image {row['image']}")
        finding = "Infiltration" if row["finding"] == "Infiltrate" else row["finding"]
        add_box("nih", row["image"], finding, row, where)
    for line, row in _rows(root / "rsna_boxes.csv"):
        where = f"{root / 'rsna_boxes.csv'}:{line}"
        if row["image"] not in index or row["target"] not in ("0", "1"):
            raise XrayFormatError(f"{where}: unknown image {row['image']} or target {row['target']!r} not 0/1")
        rsna[index[row["image"]]] = int(row["target"])
        if row["target"] == "1":
            add_box("rsna", row["image"], RSNA_FINDINGS[0], row, where)
    return SubsetTable(
        np.stack(images), np.array(image_ids), np.array(patients), np.array(labels, dtype=np.uint8), rsna,
        np.array(box_image, dtype=np.int64), np.array(box_source), np.array(box_finding),
        np.array(box_xyxy, dtype=np.float32).reshape(-1, 4),
    )


@cache
def _embedded_table() -> SubsetTable:
    ref = resources.files("linearlens") / "_embedded" / EMBEDDED_XRAY_FILE
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as data:
        return SubsetTable(**{k: data[k] for k in SubsetTable.__dataclass_fields__})


def _to_set(table: SubsetTable, task: str) -> XraySet:
    if task == "rsna":
        rows = np.nonzero(table.rsna_target >= 0)[0]
        table = table.subset(rows)
        classes, labels, source = RSNA_FINDINGS, table.rsna_target[:, None].astype(np.float32), "rsna"
    else:
        classes, labels, source = NIH_FINDINGS, table.nih_labels.astype(np.float32), "nih"
    boxes, box_labels = [], []
    for i in range(len(table.image_ids)):
        sel = (table.box_image == i) & (table.box_source == source)
        boxes.append(torch.from_numpy(table.box_xyxy[sel].copy()).reshape(-1, 4))
        box_labels.append(torch.tensor([classes.index(f) for f in table.box_finding[sel]], dtype=torch.long))
    return XraySet(
        torch.from_numpy(table.images.copy())[:, None], torch.from_numpy(labels), tuple(classes), boxes, box_labels,
        tuple(str(p) for p in table.patient_ids), tuple(str(i) for i in table.image_ids),
    )


def load_xray_subset(source: PathLike = "embedded", task: str = "rsna", size: int | None = None) -> XraySet:
    """The real NIH subset for ``task`` (see module docstring) from ``"embedded"`` or the shared folder path.

    ``size`` resizes the images (and boxes) of the shared folder; the embedded copy is 128 px and is resized
    from there when ``size`` differs.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if str(source) == "embedded":
        table = _embedded_table()
        if size is not None and size != table.images.shape[-1]:
            factor = size / table.images.shape[-1]
            table = SubsetTable(**{**table.__dict__,
                                   "images": np.stack([resize_image(im, size) for im in table.images]),
                                   "box_xyxy": table.box_xyxy * np.float32(factor)})
    else:
        table = read_subset_table(source, size)
    return _to_set(table, task)

"""RSNA Pneumonia Detection Challenge (2018) annotations: ``stage_2_train_labels.csv``.

Shih et al., Radiology: AI 2019.  Columns ``patientId, x, y, width, height, Target``: one row per "Lung
Opacity" box (``Target`` 1, box in pixels of the 1024 x 1024 DICOM) or a single row with empty box fields
for an image without lung opacity (``Target`` 0 — which includes abnormal images without opacity).
Every RSNA ``patientId`` is one image, so it is both image and patient id.
"""

from __future__ import annotations

from linearlens.data.xray.records import (
    Box,
    ImageRecord,
    PathLike,
    XrayFormatError,
    check_box,
    parse_float,
    read_csv_rows,
)

__all__ = ["RSNA_FINDINGS", "read_rsna"]

RSNA_FINDINGS: tuple[str, ...] = ("Lung Opacity",)
_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def read_rsna(labels_csv: PathLike) -> dict[str, ImageRecord]:
    """One :class:`ImageRecord` per ``patientId``, with finding ``Lung Opacity`` and its boxes when Target is 1.

    Rows of one patient must agree on ``Target``; a positive row needs all four box fields and a negative
    row must leave them empty.
    """
    records: dict[str, ImageRecord] = {}
    targets: dict[str, str] = {}
    for line, row in read_csv_rows(labels_csv, _COLUMNS):
        where = f"{labels_csv}:{line}"
        pid, target = row[0].strip(), row[5].strip()
        if not pid:
            raise XrayFormatError(f"{where}: empty patientId")
        if target not in ("0", "1"):
            raise XrayFormatError(f"{where}: Target must be 0 or 1, got {target!r}")
        if targets.setdefault(pid, target) != target:
            raise XrayFormatError(f"{where}: Target {target} contradicts an earlier row of {pid} with {targets[pid]}")
        record = records.setdefault(pid, ImageRecord(pid, pid))
        fields = [v.strip() for v in row[1:5]]
        if target == "0":
            if any(fields):
                raise XrayFormatError(f"{where}: Target 0 row of {pid} has box fields {fields}")
            continue
        if not all(fields):
            raise XrayFormatError(f"{where}: Target 1 row of {pid} lacks box fields {fields}")
        x, y, w, h = (parse_float(v, name, where) for v, name in zip(fields, ("x", "y", "width", "height")))
        check_box(x, y, x + w, y + h, where)
        record.findings.add(RSNA_FINDINGS[0])
        record.boxes.append(Box(RSNA_FINDINGS[0], x, y, x + w, y + h))
    return records

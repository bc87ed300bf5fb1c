"""NIH ChestX-ray14 annotations: ``Data_Entry_2017*.csv`` (labels) and ``BBox_List_2017.csv`` (boxes).

Wang et al., "ChestX-ray8", CVPR 2017.  ``Data_Entry`` has one row per PNG with the text-mined
``Finding Labels`` (``|``-separated, ``No Finding`` for none) and the ``Patient ID``; ``BBox_List`` has one
row per radiologist box as ``x, y, w, h`` in pixels of the released 1024 x 1024 PNG.  The box file names
one finding ``Infiltrate`` where the label file says ``Infiltration``; both mean the same class here.
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

__all__ = ["NIH_FINDINGS", "read_nih"]

#: The 14 NIH findings in the order of the ChestX-ray14 paper's label set.
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
_BOX_ALIASES = {"Infiltrate": "Infiltration"}
_ENTRY_COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID")
_BOX_COLUMNS = ("Image Index", "Finding Label", "Bbox [x")


def _finding(name: str, where: str) -> str:
    name = _BOX_ALIASES.get(name.strip(), name.strip())
    if name not in NIH_FINDINGS:
        raise XrayFormatError(f"{where}: unknown finding {name!r} (known: {', '.join(NIH_FINDINGS)})")
    return name


def read_nih(entries_csv: PathLike, bbox_csv: PathLike | None = None) -> dict[str, ImageRecord]:
    """One :class:`ImageRecord` per row of ``entries_csv``, with the boxes of ``bbox_csv`` attached.

    A box for an image that is not in ``entries_csv`` or whose finding is not among the image's labels
    is an error (the two files contradict each other); so is an image listed twice.
    """
    records: dict[str, ImageRecord] = {}
    for line, row in read_csv_rows(entries_csv, _ENTRY_COLUMNS):
        where = f"{entries_csv}:{line}"
        image_id, labels, patient = row[0].strip(), row[1].strip(), row[3].strip()
        if not image_id or not patient:
            raise XrayFormatError(f"{where}: empty image index or patient id")
        if image_id in records:
            raise XrayFormatError(f"{where}: image {image_id} is listed twice")
        names = [part.strip() for part in labels.split("|") if part.strip()]
        if not names:
            raise XrayFormatError(f"{where}: empty Finding Labels (use {NO_FINDING!r} for none)")
        if NO_FINDING in names and len(names) > 1:
            raise XrayFormatError(f"{where}: {NO_FINDING!r} together with findings {names}")
        findings = set() if names == [NO_FINDING] else {_finding(n, where) for n in names}
        records[image_id] = ImageRecord(image_id, patient, findings)
    if bbox_csv is not None:
        for line, row in read_csv_rows(bbox_csv, _BOX_COLUMNS):
            where = f"{bbox_csv}:{line}"
            image_id, finding = row[0].strip(), _finding(row[1], where)
            x, y, w, h = (parse_float(v, name, where) for v, name in zip(row[2:6], "xywh"))
            check_box(x, y, x + w, y + h, where)
            record = records.get(image_id)
            if record is None:
                raise XrayFormatError(f"{where}: box for image {image_id}, which {entries_csv} does not list")
            if finding not in record.findings:
                labels = sorted(record.findings)
                raise XrayFormatError(f"{where}: {finding} box on {image_id}, whose labels are {labels}")
            record.boxes.append(Box(finding, x, y, x + w, y + h))
    return records

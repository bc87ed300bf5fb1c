"""VinBigData / VinDr-CXR annotations: ``train.csv`` with one row per radiologist finding.

Nguyen et al., "VinDr-CXR", 2020.  Columns ``image_id, class_name, class_id, rad_id, x_min, y_min, x_max,
y_max`` (pixels of the original DICOM); class 14 ``No finding`` has empty box fields.  Each training image
was read by three radiologists, who often disagree, so rows must be merged:

Merge policy (documented in ``docs/xray.md``)
    *Labels*: a finding is positive when at least ``min_votes`` distinct radiologists marked it (default 1:
    any reader, the usual VinBigData practice).  *Boxes* of the positive findings:

    ``"union"`` (default)
        every reader's box is kept.  The energy-based pointing game scores against the union of an image's
        boxes, so this counts any region some reader marked as lesion, overlaps once.
    ``"consensus"``
        per finding, boxes are clustered greedily in file order: a box joins the first cluster whose mean box
        it overlaps with IoU >= ``iou`` and which has no box of the same reader yet; clusters supported by at
        least ``min_votes`` readers become one box with the mean coordinates.

VinBigData releases no patient ids, so the image id stands in for the patient.
"""

from __future__ import annotations

from collections import defaultdict

from linearlens.data.xray.records import (
    Box,
    ImageRecord,
    PathLike,
    XrayFormatError,
    check_box,
    parse_float,
    read_csv_rows,
)

__all__ = ["VINDR_FINDINGS", "MERGE_POLICIES", "read_vindr", "box_iou"]

#: VinBigData class names; ``class_id`` ``i`` is ``VINDR_FINDINGS[i]`` and 14 is "No finding".
VINDR_FINDINGS: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD", "Infiltration",
    "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax",
    "Pulmonary fibrosis",
)
NO_FINDING = "No finding"
MERGE_POLICIES = ("union", "consensus")
_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (continuous coordinates)."""
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter)


def _mean_box(boxes: list[Box]) -> Box:
    n = len(boxes)
    return Box(
        boxes[0].finding,
        sum(b.x1 for b in boxes) / n, sum(b.y1 for b in boxes) / n,
        sum(b.x2 for b in boxes) / n, sum(b.y2 for b in boxes) / n,
    )


def _consensus(boxes: list[Box], iou: float, min_votes: int) -> list[Box]:
    clusters: list[list[Box]] = []
    for box in boxes:
        for cluster in clusters:
            if box.reader not in {b.reader for b in cluster} and box_iou(box, _mean_box(cluster)) >= iou:
                cluster.append(box)
                break
        else:
            clusters.append([box])
    return [_mean_box(c) for c in clusters if len({b.reader for b in c}) >= min_votes]


def read_vindr(
    annotations_csv: PathLike, merge: str = "union", min_votes: int = 1, iou: float = 0.5
) -> dict[str, ImageRecord]:
    """One :class:`ImageRecord` per ``image_id``, readers merged by the policy in the module docstring."""
    if merge not in MERGE_POLICIES:
        raise ValueError(f"merge must be one of {MERGE_POLICIES}, got {merge!r}")
    if min_votes < 1:
        raise ValueError(f"min_votes must be >= 1, got {min_votes}")
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou}")
    readers: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    boxes: dict[str, dict[str, list[Box]]] = defaultdict(lambda: defaultdict(list))
    for line, row in read_csv_rows(annotations_csv, _COLUMNS):
        where = f"{annotations_csv}:{line}"
        image_id, name, class_id, reader = (v.strip() for v in row[:4])
        if not image_id or not reader:
            raise XrayFormatError(f"{where}: empty image_id or rad_id")
        known = (*VINDR_FINDINGS, NO_FINDING)
        if not class_id.isdigit() or int(class_id) >= len(known) or known[int(class_id)] != name:
            raise XrayFormatError(f"{where}: class_id {class_id!r} does not name class {name!r} (expected one of "
                                  f"{', '.join(f'{i}={n}' for i, n in enumerate(known))})")
        fields = [v.strip() for v in row[4:8]]
        readers[image_id]  # an image with only "No finding" rows still gets a record
        if name == NO_FINDING:
            if any(fields):
                raise XrayFormatError(f"{where}: 'No finding' row has box fields {fields}")
            continue
        if not all(fields):
            raise XrayFormatError(f"{where}: {name} row lacks box fields {fields}")
        x1, y1, x2, y2 = (parse_float(v, c, where) for v, c in zip(fields, _COLUMNS[4:]))
        check_box(x1, y1, x2, y2, where)
        readers[image_id][name].add(reader)
        boxes[image_id][name].append(Box(name, x1, y1, x2, y2, reader))
    records = {}
    for image_id, by_finding in readers.items():
        findings = {name for name, who in by_finding.items() if len(who) >= min_votes}
        kept: list[Box] = []
        for name in sorted(findings, key=VINDR_FINDINGS.index):
            found = boxes[image_id][name]
            kept.extend(found if merge == "union" else _consensus(found, iou, min_votes))
        records[image_id] = ImageRecord(image_id, image_id, findings, kept)
    return records

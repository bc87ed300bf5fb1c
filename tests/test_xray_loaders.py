"""Chest X-ray loaders on real-format annotation excerpts (tests/fixtures/xray) and synthetic pixels.

Expected values are recomputed here from the fixture files with the ``csv`` module, independently of the
loaders' parsing; DICOM files are written with pydicom (no real DICOMs are available here).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linearlens.data.xray import (
    NIH_FINDINGS,
    VINDR_FINDINGS,
    XrayFormatError,
    load_nih,
    load_rsna,
    load_vindr,
    read_dicom,
    read_nih,
    read_rsna,
    read_vindr,
)

FIXTURES = Path(__file__).parent / "fixtures" / "xray"
ENTRIES = FIXTURES / "Data_Entry_2017_v2020.csv"
BOXES = FIXTURES / "BBox_List_2017.csv"
RSNA = FIXTURES / "stage_2_train_labels.csv"
VINDR = FIXTURES / "vinbigdata-train.csv"


def raw_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))[1:]


def corrupt(tmp_path: Path, source: Path, line: int, new_row: str) -> Path:
    """A copy of ``source`` with (1-based) ``line`` replaced by ``new_row``."""
    lines = source.read_text().split("\n")
    lines[line - 1] = new_row
    out = tmp_path / source.name
    out.write_text("\n".join(lines))
    return out


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0,
                intercept: float = 0.0) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.set_pixel_data(pixels.astype(np.uint16), photometric, 12)
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------------------------------------ NIH


def test_nih_labels_and_boxes_match_the_file():
    records = read_nih(ENTRIES, BOXES)
    rows = raw_rows(ENTRIES)
    assert list(records) == [r[0] for r in rows]
    for row in rows:
        rec = records[row[0]]
        expected = set() if row[1] == "No Finding" else set(row[1].split("|"))
        assert rec.findings == expected and rec.patient_id == row[3]
    boxes = defaultdict(list)
    for row in raw_rows(BOXES):
        x, y, w, h = map(float, row[2:6])
        boxes[row[0]].append((row[1].replace("Infiltrate", "Infiltration"), x, y, x + w, y + h))
    assert sum(len(r.boxes) for r in records.values()) == len(raw_rows(BOXES)) == 30
    for image_id, expected in boxes.items():
        got = [(b.finding, b.x1, b.y1, b.x2, b.y2) for b in records[image_id].boxes]
        assert got == expected
    assert sum(len(b) > 1 for b in boxes.values()) >= 3  # the excerpt has images with several boxes


@pytest.mark.parametrize(
    ("source", "line", "row", "message"),
    [
        (BOXES, 3, "00014716_007.png,Atelectasis,686.1,abc,185.4,313.4", "y must be a number"),
        (BOXES, 3, "00014716_007.png,Atelectasis,686.1,131.5,185.4", "expected 6 fields"),
        (BOXES, 3, "00014716_007.png,Flu,686.1,131.5,185.4,313.4", "unknown finding 'Flu'"),
        (BOXES, 3, "00014716_007.png,Atelectasis,686.1,131.5,-5,313.4", "has no area"),
        (BOXES, 3, "99999999_000.png,Atelectasis,686.1,131.5,185.4,313.4", "does not list"),
        (ENTRIES, 4, "00000001_002.png,,2,1,58,M,PA,2500,2048,0.168,0.168", "empty Finding Labels"),
        (ENTRIES, 4, "00000001_002.png,No Finding|Effusion,2,1,58,M,PA,2500,2048,0.168,0.168", "together with"),
        (ENTRIES, 1, "Image,Labels,Follow-up #,Patient ID", "does not start with the expected columns"),
    ],
)
def test_nih_malformed_rows_name_file_and_line(tmp_path, source, line, row, message):
    broken = corrupt(tmp_path, source, line, row)
    entries = broken if source == ENTRIES else ENTRIES
    boxes = broken if source == BOXES else BOXES
    with pytest.raises(XrayFormatError, match=rf"{broken.name}:{line}: .*{message}"):
        read_nih(entries, boxes)


def test_nih_box_on_image_without_that_label_is_rejected(tmp_path):
    # 00000001_000.png is labelled Cardiomegaly only
    broken = corrupt(tmp_path, BOXES, 2, "00000001_000.png,Atelectasis,10,10,20,20")
    with pytest.raises(XrayFormatError, match=r":2: Atelectasis box on 00000001_000.png"):
        read_nih(ENTRIES, broken)


def test_load_nih_reads_pngs_and_rescales_boxes(tmp_path):
    records = read_nih(ENTRIES, BOXES)
    boxed = [r for r in records.values() if r.boxes][:3]
    rng = np.random.default_rng(0)
    originals = {}
    for rec in boxed:  # NIH PNGs are 1024 x 1024; boxes are in that frame
        originals[rec.image_id] = rng.integers(0, 256, (1024, 1024), dtype=np.uint8)
        Image.fromarray(originals[rec.image_id]).save(tmp_path / rec.image_id)
    with pytest.raises(FileNotFoundError, match="missing='skip'"):
        load_nih(ENTRIES, tmp_path, BOXES, size=128)
    data = load_nih(ENTRIES, tmp_path, BOXES, size=128, missing="skip")
    assert data.image_ids == tuple(r.image_id for r in boxed) and data.images.shape == (3, 1, 128, 128)
    for i, rec in enumerate(boxed):
        expected = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in rec.boxes]) / 8
        torch.testing.assert_close(data.boxes[i], expected)
        assert [data.classes[j] for j in data.box_labels[i]] == [b.finding for b in rec.boxes]
        assert data.labels[i].tolist() == [float(f in rec.findings) for f in NIH_FINDINGS]
        # bilinear downsampling by 8 keeps the mean brightness
        assert abs(data.images[i].float().mean() - originals[rec.image_id].mean()) < 1.0
    full = load_nih(ENTRIES, tmp_path, BOXES, missing="skip")
    assert torch.equal(full.images[0, 0], torch.from_numpy(originals[boxed[0].image_id]))


# ------------------------------------------------------------------------------------------------ RSNA


def test_rsna_targets_and_boxes_match_the_file():
    records = read_rsna(RSNA)
    expected = defaultdict(list)
    target = {}
    for pid, x, y, w, h, t in raw_rows(RSNA):
        target[pid] = t
        if t == "1":
            expected[pid].append((float(x), float(y), float(x) + float(w), float(y) + float(h)))
    assert set(records) == set(target)
    for pid, rec in records.items():
        assert rec.findings == ({"Lung Opacity"} if target[pid] == "1" else set())
        assert [(b.x1, b.y1, b.x2, b.y2) for b in rec.boxes] == expected[pid]
    assert any(len(v) > 1 for v in expected.values())


@pytest.mark.parametrize(
    ("line", "row", "message"),
    [
        (2, "0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,2", "Target must be 0 or 1"),
        (2, "0004cfab-14fd-4e49-80ba-63a80b6bddd6,1,2,3,4,0", "Target 0 row .* has box fields"),
        (2, "0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,1", "Target 1 row .* lacks box fields"),
        (7, "00436515-870c-4b36-a041-de91049b9ab4,,,,,0", "contradicts an earlier row"),
        (2, "0004cfab-14fd-4e49-80ba-63a80b6bddd6,1,2,nan,4,1", "must be finite"),
    ],
)
def test_rsna_malformed_rows_name_file_and_line(tmp_path, line, row, message):
    with pytest.raises(XrayFormatError, match=rf"stage_2_train_labels.csv:{line}: .*{message}"):
        read_rsna(corrupt(tmp_path, RSNA, line, row))


def test_dicom_pixel_path_applies_modality_lut_and_monochrome1(tmp_path):
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    write_dicom(tmp_path / "m2.dcm", pixels, "MONOCHROME2", slope=2.0, intercept=-5.0)
    write_dicom(tmp_path / "m1.dcm", pixels, "MONOCHROME1")
    expected = np.round(np.arange(12).reshape(3, 4) * 255 / 11).astype(np.uint8)  # affine LUT then min-max
    np.testing.assert_array_equal(read_dicom(tmp_path / "m2.dcm"), expected)
    np.testing.assert_array_equal(read_dicom(tmp_path / "m1.dcm"), expected[::-1, ::-1])  # inverted ramp
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom")
    with pytest.raises(ValueError, match="bad.dcm: not a readable DICOM"):
        read_dicom(tmp_path / "bad.dcm")


def test_load_rsna_from_dicom(tmp_path):
    records = read_rsna(RSNA)
    pids = [p for p, r in records.items() if len(r.boxes) > 1][:1] + [p for p, r in records.items() if not r.boxes][:2]
    for pid in pids:
        write_dicom(tmp_path / f"{pid}.dcm", np.random.default_rng(1).integers(0, 4096, (512, 512)))
    data = load_rsna(RSNA, tmp_path, size=64, missing="skip")
    assert sorted(data.image_ids) == sorted(pids) and data.classes == ("Lung Opacity",)
    i = data.image_ids.index(pids[0])
    assert data.labels[i].item() == 1 and data.patient_ids[i] == pids[0]
    expected = torch.tensor([[b.x1, b.y1, b.x2, b.y2] for b in records[pids[0]].boxes]) * (64 / 512)
    torch.testing.assert_close(data.boxes[i], expected)
    assert data.labels.sum() == 1 and all(len(b) == 0 for j, b in enumerate(data.boxes) if j != i)


# ------------------------------------------------------------------------------------------------ VinDr


def test_vindr_union_keeps_every_readers_box_and_any_reader_label():
    records = read_vindr(VINDR)
    rows = raw_rows(VINDR)
    by_image = defaultdict(list)
    for row in rows:
        by_image[row[0]].append(row)
    assert set(records) == set(by_image)
    for image_id, image_rows in by_image.items():
        boxed = [r for r in image_rows if r[2] != "14"]
        assert records[image_id].findings == {r[1] for r in boxed}
        got = sorted((b.finding, b.x1, b.y1, b.x2, b.y2, b.reader) for b in records[image_id].boxes)
        assert got == sorted((r[1], *map(float, r[4:8]), r[3]) for r in boxed)


def test_vindr_consensus_merges_agreeing_readers():
    records = read_vindr(VINDR, merge="consensus", min_votes=2, iou=0.5)
    # 9a5094b2...: Cardiomegaly boxes of R10, R8, R9 overlap strongly -> one averaged box; the single-reader
    # findings (aortic enlargement, effusion, thickening by R9 only) drop out with two votes required.
    rec = records["9a5094b2563a1ef3ff50dc5c7ff71345"]
    assert rec.findings == {"Cardiomegaly"}
    (box,) = rec.boxes
    assert (box.x1, box.y1, box.x2, box.y2) == pytest.approx(
        ((691 + 689 + 692) / 3, (1375 + 1313 + 1375) / 3, (1653 + 1666 + 1657) / 3, (1831 + 1763 + 1799) / 3))
    # a reader cannot vote twice for one cluster: R9's three nodule boxes on d3637a19 stay three clusters
    assert "Nodule/Mass" not in records["d3637a1935a905b3c326af31389cb846"].findings
    assert not records["50a418190bc3fb1ef1633bf9678929b3"].findings  # "No finding" by all three readers


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("9a5094b2563a1ef3ff50dc5c7ff71345,Cardiomegaly,4,R10,691.0,1375.0,1653.0,1831.0", "does not name class"),
        ("9a5094b2563a1ef3ff50dc5c7ff71345,No finding,14,R10,1,2,3,4", "'No finding' row has box"),
        ("9a5094b2563a1ef3ff50dc5c7ff71345,Cardiomegaly,3,R10,,,,", "lacks box fields"),
        ("9a5094b2563a1ef3ff50dc5c7ff71345,Cardiomegaly,3,R10,691.0,1375.0,600.0,1831.0", "has no area"),
    ],
)
def test_vindr_malformed_rows_name_file_and_line(tmp_path, row, message):
    with pytest.raises(XrayFormatError, match=rf"vinbigdata-train.csv:5: .*{message}"):
        read_vindr(corrupt(tmp_path, VINDR, 5, row))
    with pytest.raises(ValueError, match="merge must be one of"):
        read_vindr(VINDR, merge="vote")


def test_load_vindr_rescales_boxes_per_axis(tmp_path):
    records = read_vindr(VINDR)
    image_id = "9a5094b2563a1ef3ff50dc5c7ff71345"
    write_dicom(tmp_path / f"{image_id}.dicom", np.zeros((2500, 2000), dtype=np.uint16) + 7)
    data = load_vindr(VINDR, tmp_path, size=100, missing="skip")
    assert data.image_ids == (image_id,) and data.classes == VINDR_FINDINGS
    expected = torch.tensor([[b.x1 / 20, b.y1 / 25, b.x2 / 20, b.y2 / 25] for b in records[image_id].boxes])
    torch.testing.assert_close(data.boxes[0], expected)
    assert data.labels[0].nonzero().flatten().tolist() == sorted(VINDR_FINDINGS.index(f)
                                                                 for f in records[image_id].findings)

"""Annotation records shared by the chest X-ray loaders, and strict CSV reading.

Every loader first turns its annotation file(s) into one :class:`ImageRecord` per image (findings as
names, boxes as :class:`Box` in the pixel coordinates of the *original* image), then
:func:`linearlens.data.xray.dataset.assemble` reads and resizes the pixels and rescales the boxes.
Keeping the two steps apart lets the annotation parsers be tested on the real files alone.

Malformed input raises :class:`XrayFormatError` whose message starts with ``<file>:<line>:`` (line 1
is the header), so a user can open the file at the offending row.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

__all__ = ["Box", "ImageRecord", "XrayFormatError", "read_csv_rows", "parse_float", "PathLike"]

PathLike = Union[str, "os.PathLike[str]"]


class XrayFormatError(ValueError):
    """A malformed annotation file; the message names the file and the line."""


@dataclass(frozen=True)
class Box:
    """One box ``[x1, x2) x [y1, y2)`` in pixels of the original image, for one finding.

    ``reader`` is the annotating radiologist where the format says (VinDr-CXR ``rad_id``), else ``None``.
    """

    finding: str
    x1: float
    y1: float
    x2: float
    y2: float
    reader: str | None = None


@dataclass
class ImageRecord:
    """Everything an annotation file says about one image: its findings (names) and boxes."""

    image_id: str
    patient_id: str
    findings: set[str] = field(default_factory=set)
    boxes: list[Box] = field(default_factory=list)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_csv_rows(path: PathLike, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, fields)`` of a CSV file (plain or ``.gz``) whose header starts with ``columns``.

    Fields are returned positionally: several of the released headers contain commas inside a column
    name (NIH's ``Bbox [x,y,w,h]``), so names cannot be trusted beyond their prefix.  A row with a
    different field count than the header (trailing empty header names and cells aside), or a header that
    does not start with ``columns``, raises :class:`XrayFormatError`.  Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise XrayFormatError(f"{path}:1: empty file, expected a header starting with {list(columns)}") from None
        except (csv.Error, UnicodeDecodeError) as err:
            raise XrayFormatError(f"{path}:1: not a readable CSV header ({err})") from None
        if [h.strip() for h in header[: len(columns)]] != list(columns):
            raise XrayFormatError(f"{path}:1: header {header} does not start with the expected columns {list(columns)}")
        width = len(header)
        while width and not header[width - 1].strip():
            width -= 1  # NIH's box header ends in three empty names its rows do not have
        try:
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) > width and not any(cell.strip() for cell in row[width:]):
                    row = row[:width]
                if len(row) != width:
                    raise XrayFormatError(f"{path}:{reader.line_num}: expected {width} fields, got {len(row)}: {row}")
                yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as err:
            raise XrayFormatError(f"{path}:{reader.line_num}: unreadable row ({err})") from None


def parse_float(text: str, what: str, where: str) -> float:
    """A finite float from a CSV cell, else :class:`XrayFormatError` at ``where`` (``file:line``)."""
    try:
        value = float(text)
    except ValueError:
        raise XrayFormatError(f"{where}: {what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise XrayFormatError(f"{where}: {what} must be finite, got {text!r}")
    return value


def check_box(x1: float, y1: float, x2: float, y2: float, where: str) -> None:
    """Reject boxes with negative origin or without area."""
    if x1 < 0 or y1 < 0 or x2 <= x1 or y2 <= y1:
        raise XrayFormatError(f"{where}: box x1={x1}, y1={y1}, x2={x2}, y2={y2} has no area or lies left/above 0")

"""Radiograph pixels: PNG and DICOM files to 8-bit grayscale arrays, and resizing.

DICOM (through pydicom) is converted as a radiologist's viewer would show it: the modality LUT (rescale
slope/intercept) first, then the VOI LUT or window the file specifies (none: the full range), then
``MONOCHROME1`` images (where a high value is dark) are inverted, and the result is min-max scaled to
0..255.  PNGs (NIH ships 8-bit grayscale, a few RGBA) are converted to 8-bit grayscale with Pillow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from linearlens.data.xray.records import PathLike

__all__ = ["read_png", "read_dicom", "read_radiograph", "resize_image", "DICOM_SUFFIXES"]

DICOM_SUFFIXES = (".dcm", ".dicom")


def read_png(path: PathLike) -> np.ndarray:
    """``(H, W)`` uint8 grayscale from a PNG (or any image Pillow reads)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I", "F"):
                array = np.asarray(img, dtype=np.float64)
                return _to_uint8(array)
            return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: not a readable image ({err})") from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def read_dicom(path: PathLike) -> np.ndarray:
    """``(H, W)`` uint8 grayscale from a single-frame DICOM, as described in the module docstring."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError, OSError) as err:
        raise ValueError(f"{path}: not a readable DICOM image ({err})") from None
    if raw.ndim != 2:
        raise ValueError(f"{path}: expected one grayscale frame, got pixel data of shape {raw.shape}")
    values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        values = values.max() - values
    return _to_uint8(values)


def read_radiograph(path: PathLike) -> np.ndarray:
    """:func:`read_dicom` for ``.dcm``/``.dicom`` files, else :func:`read_png`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return read_dicom(path) if path.suffix.lower() in DICOM_SUFFIXES else read_png(path)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a ``(H, W)`` uint8 image to ``size x size`` (Pillow bilinear with antialiasing).

    The aspect ratio is not kept (as in the paper's pipeline); boxes are rescaled per axis to match.
    """
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)

"""Moving pictures and arrays between the library and the page: PNG data URIs, raw floats, uploads."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["png_data_uri", "float_array", "decode_image", "check_size", "model_dtype", "MAX_SIDE"]

#: Largest image side the explorer accepts: every hover runs the network, so huge images would stall it.
MAX_SIDE = 512


def png_data_uri(array: np.ndarray | Tensor) -> str:
    """An ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` float array in ``[0, 1]`` (or uint8) as a PNG data URI."""
    a = array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def float_array(t: Tensor) -> dict:
    """A tensor as ``{"shape", "dtype": "float32", "data": base64 little-endian}``: the page gets the exact floats."""
    a = t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False)
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_image(data: bytes, name: str = "upload") -> Tensor:
    """Decode image bytes (in memory, never touching the disk) to a float ``(3, H, W)`` tensor in ``[0, 1]``."""
    if not data:
        raise ValueError(f"{name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{name} is not a readable image ({type(err).__name__}: {err})") from None
    return check_size(torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous(), name)


def check_size(image: Tensor, name: str) -> Tensor:
    """Refuse images the explorer cannot follow with the mouse (see :data:`MAX_SIDE`)."""
    h, w = image.shape[-2:]
    if max(h, w) > MAX_SIDE:
        raise ValueError(f"{name} is {w}x{h} pixels; the explorer accepts images up to {MAX_SIDE} pixels a side")
    return image


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the model's parameters (float32 for a parameter-free model)."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.float32

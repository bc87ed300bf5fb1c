"""Reading safetensors and JSON files: never unpickling, failing with one line that names the file.

Shared by ``models/`` (loading a saved model) and ``training/`` (resuming a run), so that ``models/`` need
not import ``training/`` to read a file.  It imports nothing from linearlens.  The write side (atomic
replacement, ``write_json``, ``save_model``) stays in :mod:`linearlens.training.checkpoint`: only training
and the commands write runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

__all__ = ["read_json", "read_safetensors"]

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save's zip container; a raw pickle's PROTO opcode


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, or a one-line ``ValueError`` saying what the file is.

    A pickle (``torch.save``) file is recognised by its first bytes and refused before anything parses it:
    loading a pickle can run arbitrary code.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise ValueError(
            f"{path} is a pickle (torch.save) file, not safetensors; linearlens never loads pickles because "
            "loading one can run arbitrary code"
        )
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as err:
        size = path.stat().st_size
        raise ValueError(f"{path} is not a readable safetensors file ({size} bytes; truncated or corrupt?): "
                         f"{err}") from None

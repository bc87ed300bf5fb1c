"""Patterns on disk next to the model: ``patterns.safetensors`` (tensors) + ``patterns.json`` (layers, meta).

No pickle: the tensors are safetensors, the structure (layer names, kinds, folded norms) and how
the patterns were fitted are JSON.  ``path`` is a run directory (the files go inside it, beside
``model.safetensors``) or the path of the ``.safetensors`` file itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from .layers import PatternLayer
from .patternset import LayerPatterns, PatternSet

__all__ = ["save_patterns", "load_patterns"]

TENSORS = "patterns.safetensors"
FORMAT = "linearlens-patterns/1"
_FIELDS = ("linear", "positive", "negative")


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / TENSORS, path / TENSORS.replace(".safetensors", ".json")


def save_patterns(path: str | os.PathLike, patterns: PatternSet) -> Path:
    """Write ``patterns``; returns the path of the tensor file."""
    tensors_path, json_path = _paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{name}/{f}": getattr(lp, f).detach().contiguous().cpu()
        for name, lp in patterns.layers.items()
        for f in _FIELDS
        if getattr(lp, f) is not None
    }
    layers = [{"name": lp.layer.name, "kind": lp.layer.kind, "norm": lp.layer.norm} for lp in patterns.layers.values()]
    save_file(tensors, str(tensors_path))
    json_path.write_text(json.dumps({"format": FORMAT, "layers": layers, "meta": patterns.meta}, indent=1))
    return tensors_path


def load_patterns(path: str | os.PathLike, model: nn.Module | None = None) -> PatternSet:
    """Read patterns written by :func:`save_patterns`; with ``model``, check they fit it."""
    tensors_path, json_path = _paths(path)
    for p in (tensors_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"no patterns at {p}; fit them with linearlens.patterns.fit_patterns and save them")
    info = json.loads(json_path.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not a linearlens pattern file (format {info.get('format')!r})")
    tensors = load_file(str(tensors_path))
    layers = {}
    for entry in info["layers"]:
        layer = PatternLayer(entry["name"], entry["kind"], entry.get("norm"))
        layers[layer.name] = LayerPatterns(layer, *(tensors.get(f"{layer.name}/{f}") for f in _FIELDS))
    patterns = PatternSet(layers, info.get("meta", {}))
    if model is not None:
        patterns.check_model(model)
    return patterns

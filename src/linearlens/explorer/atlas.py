"""Neuron atlas: the most activating images of every unit of a layer, explained (B-cos paper Figs. 8, 10, B4).

One batched pass over an image set records, per unit (channel) of the layer, its largest spatial
activation in every image and keeps the ``top`` largest over the set, with the image and the
position of the maximum.  For a unit, the atlas then shows the top images cropped around that
maximum next to the unit's own explanation ``[W_{1->l}(x)]_n`` at that position (Eq. (14) of the
B-cos paper; ``explain(model, x, Neuron(layer, (unit, h, w)))``), as in Fig. 10, and the class
histogram of its top activations, as in Fig. B4.  Results are cached on disk (safetensors + JSON)
under a key made of the weights' hash, the layer and the image set.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data import CIFAR10_CLASSES, load_cifar10
from ..explain import Neuron, explain
from ..explain.visualize import contribution_heatmap, weights_to_rgba
from .arrays import model_dtype, png_data_uri

__all__ = ["NeuronAtlas", "atlas_images", "weights_hash", "SHARED_CIFAR10"]

#: The project's CIFAR-10 copy, relative to the repository root.
SHARED_CIFAR10 = Path("../shared/data/cifar10")


def atlas_images(source: str = "all", limit: int | None = None) -> tuple[Tensor, Tensor, list[str], str]:
    """The image set of an atlas: ``(uint8 images, labels, classes, description)``.

    ``"all"``: the 10,000 test images of ``../shared/data/cifar10`` plus the first 500 embedded training
    images of every class (a subset of its training split, so no image twice; 15,000 images, which bounds
    the atlas pass's cost), or the embedded test images and those 5,000 training images when that folder is
    absent; ``"embedded"``: all 11,000 embedded images; else a CIFAR-10 folder's test split.  ``limit``
    keeps the first images only (tests).
    """
    if source == "all":
        parts = [load_cifar10("embedded", "train", 500)]
        parts.insert(0, load_cifar10(SHARED_CIFAR10, "test") if SHARED_CIFAR10.is_dir() else
                     load_cifar10("embedded", "test"))
        what = "shared test + embedded train" if SHARED_CIFAR10.is_dir() else "embedded train + test"
    elif source == "embedded":
        parts, what = [load_cifar10("embedded", "test"), load_cifar10("embedded", "train")], "embedded train + test"
    else:
        parts, what = [load_cifar10(source, "test")], f"{source} test"
    images = torch.cat([p.images for p in parts])
    labels = torch.cat([p.labels for p in parts])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, list(CIFAR10_CLASSES), f"{what} ({len(images)} images)"


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the model's class, parameter names and values: the cache key of its atlases."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class NeuronAtlas:
    """The top activations of every unit of ``layer`` over an image set.

    Attributes:
        values, indices: ``(U, T)`` largest per-image maxima of each unit and their image indices,
            in decreasing order.
        positions: ``(U, T, 2)`` the ``(h, w)`` of each maximum in the layer's output.
        images, labels, classes: the image set (uint8 ``(N, 3, H, W)``) it was computed on.
        layer_shape: ``(U, h, w)`` of the layer's output.
    """

    layer: str
    values: Tensor
    indices: Tensor
    positions: Tensor
    images: Tensor
    labels: Tensor
    classes: list[str]
    layer_shape: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    _views: dict[int, dict] = field(default_factory=dict, repr=False)

    @classmethod
    def compute(
        cls,
        model: nn.Module,
        layer: str,
        data: str | tuple[Tensor, Tensor, list[str]] = "all",
        *,
        limit: int | None = None,
        top: int = 100,
        batch_size: int = 500,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ) -> NeuronAtlas:
        """Scan the images in batches (plain forward passes with one hook) or load the cached result.

        ``data`` is an :func:`atlas_images` source or ``(uint8 images, labels, classes)``.
        """
        if isinstance(data, str):
            images, labels, classes, what = atlas_images(data, limit)
        else:
            images, labels, classes = data
            what = f"{len(images)} given images"
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) == 0:
            raise ValueError("atlas images must be a non-empty uint8 tensor (N, C, H, W)")
        module = dict(model.named_modules()).get(layer) if layer else None
        if module is None:
            names = [n for n, _ in model.named_modules() if n][:30]
            raise ValueError(f"model has no layer called {layer!r}; layers include: {', '.join(names)}")
        key = hashlib.sha256(f"{weights_hash(model)}|{layer}|{what}|{top}".encode()).hexdigest()[:20]
        cached = _load(cache_dir, key) if cache_dir is not None else None
        if cached is not None:
            tensors, meta = cached
            return cls(layer, tensors["values"], tensors["indices"], tensors["positions"], images, labels, classes,
                       tuple(meta["layer_shape"]), meta | {"cached": True})
        dtype = model_dtype(model)
        t0 = time.process_time()
        best_v = best_i = best_p = None
        captured: list[Tensor] = []
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            with torch.no_grad():
                for start in tqdm(range(0, len(images), batch_size), desc=f"atlas {layer}", disable=not progress):
                    captured.clear()
                    model(images[start : start + batch_size].to(dtype).div_(255))
                    out = captured[-1]
                    if out.dim() != 4:
                        raise ValueError(f"layer {layer!r} has output shape {tuple(out.shape[1:])}; "
                                         "the atlas needs a spatial (C, h, w) layer")
                    flat = out.flatten(2)  # (B, U, h*w)
                    v, arg = flat.max(2)
                    idx = torch.arange(start, start + len(out)).expand(out.shape[1], -1)
                    cand_v = v.T if best_v is None else torch.cat([best_v, v.T], 1)
                    cand_i = idx if best_i is None else torch.cat([best_i, idx], 1)
                    cand_p = arg.T if best_p is None else torch.cat([best_p, arg.T], 1)
                    k = min(top, cand_v.shape[1])
                    best_v, order = cand_v.topk(k, dim=1)
                    best_i, best_p = cand_i.gather(1, order), cand_p.gather(1, order)
                    shape = tuple(out.shape[1:])
        finally:
            handle.remove()
        positions = torch.stack([best_p // shape[2], best_p % shape[2]], -1)
        meta = {"layer_shape": list(shape), "images": what, "top": top, "key": key,
                "cpu_seconds": time.process_time() - t0, "cached": False}
        atlas = cls(layer, best_v.contiguous(), best_i.contiguous(), positions.contiguous(), images, labels, classes,
                    shape, meta)
        if cache_dir is not None:
            _save(cache_dir, key, atlas)
        return atlas

    def histogram(self, unit: int, top: int | None = None) -> Tensor:
        """Class counts among the images of the unit's ``top`` highest activations (Fig. B4)."""
        idx = self.indices[self._unit(unit), : top or self.indices.shape[1]]
        return torch.bincount(self.labels[idx], minlength=len(self.classes))

    def crop_box(self, position: Tensor, size: int | None = None) -> tuple[int, int, int]:
        """``(top, left, side)`` of the input window centred on a layer position (Fig. 10's patches)."""
        _, height, width = self.images.shape[1:]
        side = size or max(8, min(height, width) // 2)
        _, h, w = self.layer_shape
        cy = int((int(position[0]) + 0.5) * height / h)
        cx = int((int(position[1]) + 0.5) * width / w)
        top = min(max(cy - side // 2, 0), height - side)
        left = min(max(cx - side // 2, 0), width - side)
        return top, left, side

    def crops(self, model: nn.Module, unit: int, count: int = 8) -> list[dict]:
        """The unit's ``count`` top images, cropped around the maximum, with its explanation there."""
        u = self._unit(unit)
        out = []
        for j in range(min(count, self.indices.shape[1])):
            i, pos = int(self.indices[u, j]), self.positions[u, j]
            x = self.images[i : i + 1].to(model_dtype(model)).div(255)
            e = explain(model, x, Neuron(self.layer, (u, int(pos[0]), int(pos[1]))), method="linear_rows")
            if e.weights is not None and e.weights.shape[2] == 6:
                picture = weights_to_rgba(e.weights[0, 0], e.inputs[0]).numpy()
            else:
                picture = contribution_heatmap(e.attributions[0, 0])
            top, left, side = self.crop_box(pos)
            out.append({"index": i, "value": float(self.values[u, j]), "label": self.classes[int(self.labels[i])],
                        "position": [int(pos[0]), int(pos[1])], "box": [top, left, side],
                        "image": x[0, :, top : top + side, left : left + side].permute(1, 2, 0).float().numpy(),
                        "explanation": picture[top : top + side, left : left + side]})
        return out

    def overview(self) -> dict:
        """JSON for the page: every unit with its maximum and its top image's crop."""
        units = []
        for u in range(self.values.shape[0]):
            i = int(self.indices[u, 0])
            top, left, side = self.crop_box(self.positions[u, 0])
            crop = self.images[i, :, top : top + side, left : left + side].permute(1, 2, 0).numpy()
            units.append({"unit": u, "max": float(self.values[u, 0]), "thumb": png_data_uri(crop)})
        return {"layer": self.layer, "images": int(len(self.images)), "what": self.meta.get("images"),
                "units": units, "classes": self.classes}

    def unit_view(self, model: nn.Module, unit: int, count: int = 8) -> dict:
        """JSON for one unit: crops with explanations and the class histogram (cached per unit)."""
        u = self._unit(unit)
        if u not in self._views:
            crops = [{**{k: c[k] for k in ("index", "value", "label", "position", "box")},
                      "image": png_data_uri(c["image"]), "explanation": png_data_uri(c["explanation"])}
                     for c in self.crops(model, u, count)]
            self._views[u] = {"unit": u, "crops": crops, "histogram": self.histogram(u).tolist(),
                              "histogram_top": int(self.indices.shape[1]), "classes": self.classes}
        return self._views[u]

    def _unit(self, unit: int) -> int:
        if not 0 <= int(unit) < self.values.shape[0]:
            raise ValueError(f"unit {unit} is out of range: layer {self.layer!r} has {self.values.shape[0]} units")
        return int(unit)


def _paths(cache_dir: str | Path, key: str) -> tuple[Path, Path]:
    folder = Path(cache_dir)
    return folder / f"atlas-{key}.safetensors", folder / f"atlas-{key}.json"


def _save(cache_dir: str | Path, key: str, atlas: NeuronAtlas) -> None:
    tensors_path, meta_path = _paths(cache_dir, key)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"values": atlas.values, "indices": atlas.indices, "positions": atlas.positions}, str(tensors_path))
    meta_path.write_text(json.dumps({**atlas.meta, "layer": atlas.layer}, indent=2) + "\n")


def _load(cache_dir: str | Path, key: str) -> tuple[dict[str, Tensor], dict] | None:
    tensors_path, meta_path = _paths(cache_dir, key)
    if not (tensors_path.is_file() and meta_path.is_file()):
        return None
    return load_file(str(tensors_path)), json.loads(meta_path.read_text())

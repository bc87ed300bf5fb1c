"""The explorer's state: one network, a list of images, and per image the cached linear answers.

Everything the page shows is computed by the library (:func:`linearlens.explain`,
:class:`linearlens.LinearScope`, :func:`linearlens.interpret.bias_contributions`) and cached per
image, so that a hover costs one row and one column of the linear interpreter: one frozen
forward-and-backward pass and one two-batch pass (Eqs. (5)-(6) of the linear-interpreter paper).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..explain import explain
from ..explain.visualize import contribution_heatmap, weights_to_rgba
from ..interpret import LinearScope, bias_contributions
from .arrays import check_size, float_array, model_dtype, png_data_uri
from .probe import LayerOutput, spatial_layers

__all__ = ["Explorer", "ImageEntry"]

SCORES = ("sigmoid", "softmax", "raw")


@dataclass
class ImageEntry:
    """One image of the explorer and what has been computed for it."""

    name: str
    image: Tensor  # (C, H, W) float in [0, 1]
    label: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)


class Explorer:
    """A network and a set of images, answering the explorer page's questions.

    Args:
        model: a classifier (outputs ``(N, classes)``) or an image-to-image network (outputs
            ``(N, C, H, W)``), in eval mode.
        class_names: names of the classifier's outputs (default: ``class 0``, ...).
        scores: how classifier outputs are shown: ``"sigmoid"`` (networks trained with binary
            cross-entropy, as linearlens trains them, Eq. (16) of the B-cos paper), ``"softmax"``
            or ``"raw"``.
        layer: for classifiers, the spatial layer whose units the hover explains (default: the
            last module with an ``(N, C, h, w)`` output).
        max_images: uploads beyond this many replace the oldest upload.
        atlas: an optional :class:`~linearlens.explorer.atlas.NeuronAtlas` to browse.

    All methods serialise on one lock: forward hooks and the tracer's mode are process-wide.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        class_names: list[str] | None = None,
        scores: str = "sigmoid",
        layer: str | None = None,
        max_images: int = 256,
        atlas: Any = None,
    ) -> None:
        if scores not in SCORES:
            raise ValueError(f"scores must be one of {', '.join(SCORES)}, got {scores!r}")
        self.model, self.scores, self.max_images, self.atlas = model.eval(), scores, max_images, atlas
        self.class_names, self.layer = class_names, layer
        self.images: list[ImageEntry] = []
        self.kind: str | None = None
        self.layers: dict[str, tuple[int, ...]] = {}
        self.lock = threading.RLock()
        self._probe: nn.Module | None = None

    # --- images -----------------------------------------------------------------------------------

    def add_image(self, image: Tensor, name: str, label: int | None = None) -> int:
        """Add an image ``(3, H, W)`` in ``[0, 1]``; runs the network once so that errors show now."""
        if not isinstance(image, Tensor) or image.dim() != 3 or not image.is_floating_point():
            raise ValueError(f"{name}: an image must be a float tensor (C, H, W) in [0, 1]")
        entry = ImageEntry(name, check_size(image.detach().to(model_dtype(self.model)), name), label)
        with self.lock:
            self._setup(entry.image)
            self._summary(entry)
            if len(self.images) >= self.max_images:
                self.images.pop(0)
            self.images.append(entry)
            return len(self.images) - 1

    def entry(self, index: int) -> ImageEntry:
        if not 0 <= index < len(self.images):
            raise IndexError(f"no image {index}: the explorer holds {len(self.images)} image(s)")
        return self.images[index]

    def info(self) -> dict:
        """What the page needs first: the kind of network, classes, layers and the image list."""
        return {
            "kind": self.kind, "classes": self.class_names, "scores": self.scores, "layer": self.layer,
            "layers": {k: list(v) for k, v in self.layers.items()},
            "images": [{"id": i, "name": e.name, "size": list(e.image.shape[1:])} for i, e in enumerate(self.images)],
            "atlas": self.atlas.layer if self.atlas is not None else None,
        }

    def _setup(self, image: Tensor) -> None:
        """On the first image: is the network a classifier or image-to-image; which layer does hover show."""
        if self.kind is not None:
            return
        x = image.unsqueeze(0)
        with torch.no_grad():
            out = self.model(x)
        if not isinstance(out, Tensor) or out.dim() not in (2, 4):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the explorer needs a classifier (N, classes) or an image network (N, C, H, W); got {shape}"
            )
        if out.dim() == 2:
            self.layers = spatial_layers(self.model, x)
            if not self.layers:
                raise ValueError("the classifier has no layer with a spatial (N, C, h, w) output to hover over")
            self.layer = self.layer or list(self.layers)[-1]
            if self.layer not in self.layers:
                spatial = ", ".join(self.layers)
                raise ValueError(f"layer {self.layer!r} has no spatial output; spatial layers: {spatial}")
            self._probe = LayerOutput(self.model, self.layer)
            k = out.shape[1]
            if self.class_names is None:
                self.class_names = [f"class {i}" for i in range(k)]
            if len(self.class_names) != k:
                raise ValueError(f"{len(self.class_names)} class names for a network with {k} outputs")
        else:
            self._probe = self.model
        self.kind = "classifier" if out.dim() == 2 else "image"

    # --- what the network says ------------------------------------------------------------------------

    def summary(self, index: int) -> dict:
        with self.lock:
            return self._summary(self.entry(index))

    def _summary(self, entry: ImageEntry) -> dict:
        if "summary" in entry.cache:
            return entry.cache["summary"]
        x = entry.image.unsqueeze(0)
        with torch.no_grad():
            out = self.model(x)[0]
        result: dict[str, Any] = {"name": entry.name, "size": list(entry.image.shape[1:]),
                                  "image": png_data_uri(entry.image.permute(1, 2, 0))}
        if self.kind == "classifier":
            probs = {"sigmoid": out.sigmoid(), "softmax": out.softmax(0), "raw": out}[self.scores]
            order = probs.argsort(descending=True)
            result.update(outputs=out.tolist(), scores=probs.tolist(), top=order[:5].tolist(),
                          label=entry.label)
        else:
            result.update(output=png_data_uri(out.clamp(0, 1).permute(1, 2, 0)) if out.shape[0] in (1, 3) else None,
                          output_size=list(out.shape[1:]))
        spatial = self._scope(entry)
        result.update(row_space=list(spatial.in_shape), column_space=list(spatial.out_shape))
        entry.cache["summary"] = result
        return result

    def class_index(self, value: str | int) -> int:
        """A class given as an index or a name."""
        if self.kind != "classifier":
            raise ValueError("this network is not a classifier: it has no classes")
        names = self.class_names or []
        if isinstance(value, int) or str(value).lstrip("-").isdigit():
            k = int(value)
            if not 0 <= k < len(names):
                raise ValueError(f"unknown class {k}: the network has classes 0..{len(names) - 1}")
            return k
        if value in names:
            return names.index(value)
        raise ValueError(f"unknown class {value!r}; classes: {', '.join(names)}")

    # --- explanations -----------------------------------------------------------------------------------

    def _explanation(self, entry: ImageEntry):
        if "explanation" not in entry.cache:
            entry.cache["explanation"] = explain(self.model, entry.image.unsqueeze(0), "all", method="linear_rows")
        return entry.cache["explanation"]

    def explanation(self, index: int, cls: str | int) -> dict:
        """Colour explanation (``W(x)`` decoded, Sec. 4 of the B-cos paper) and contribution map (Eq. (15))."""
        with self.lock:
            k = self.class_index(cls)
            e = self._explanation(self.entry(index))
            return self._pictures(e, k) | {"class": k, "output": float(e.outputs[0, k]),
                                           "residual": float(e.residual[0, k])}

    def delta(self, index: int, a: str | int, b: str | int) -> dict:
        """The Δ-explanation ``W_a(x) - W_b(x)``, which explains ``y_a - y_b`` (Fig. 9 of the B-cos paper)."""
        with self.lock:
            ka, kb = self.class_index(a), self.class_index(b)
            d = self._explanation(self.entry(index)).delta(ka, kb)
            return self._pictures(d, 0) | {"classes": [ka, kb], "output": float(d.outputs[0, 0])}

    @staticmethod
    def _pictures(e, k: int) -> dict:
        colour = None
        if e.weights is not None and e.weights.shape[2] == 6:
            colour = png_data_uri(weights_to_rgba(e.weights[0, k], e.inputs[0]))
        return {"colour": colour, "contributions": png_data_uri(contribution_heatmap(e.attributions[0, k])),
                "contribution_map": float_array(e.attributions[0, k])}

    # --- the linear interpreter -------------------------------------------------------------------------

    def _scope(self, entry: ImageEntry) -> LinearScope:
        if "scope" not in entry.cache:
            entry.cache["scope"] = LinearScope(self._probe, entry.image.unsqueeze(0))
        return entry.cache["scope"]

    def _full_scope(self, entry: ImageEntry) -> LinearScope:
        if self.kind == "image":
            return self._scope(entry)
        if "full_scope" not in entry.cache:
            entry.cache["full_scope"] = LinearScope(self.model, entry.image.unsqueeze(0))
        return entry.cache["full_scope"]

    def unit_channel(self, cls: str | int | None, channel: int | None) -> int:
        """The channel of the hovered unit: the class's own map when the layer has one map per class."""
        shape = self.layers.get(self.layer) if self.kind == "classifier" else None
        if channel is not None:
            return int(channel)
        if shape is not None and cls is not None and shape[0] == len(self.class_names or []):
            return self.class_index(cls)
        return 0

    def pixel(self, index: int, row_at: tuple[int, int, int], column_at: tuple[int, int]) -> dict:
        """One row (receptive filter of output unit ``(channel, y, x)``) and the columns (projective
        filters) of every explained-input channel at input pixel ``(y, x)``: Eqs. (5)-(6)."""
        with self.lock:
            scope = self._scope(self.entry(index))
            row_index = scope.output_index(*row_at)
            channels = scope.in_shape[0]
            cols = [scope.input_index(c, *column_at) for c in range(channels)]
            row = scope.rows([row_index])[0, 0]
            column = scope.columns(cols)[0]
            return {"row": float_array(row), "column": float_array(column), "row_at": list(row_at),
                    "column_at": list(column_at), "encoded": channels == 6}

    def residual(self, index: int, cls: str | int | None = None) -> dict:
        """``r(x0)`` and its layer-wise masked-bias contributions (Theorem 1, Eqs. (8), (16))."""
        with self.lock:
            entry = self.entry(index)
            scope = self._full_scope(entry)
            if "bias" not in entry.cache:
                entry.cache["bias"] = bias_contributions(self.model, entry.image.unsqueeze(0), groups="parent")
            parts = entry.cache["bias"]
            if self.kind == "classifier":
                k = self.class_index(cls if cls is not None else int(scope.output[0].argmax()))
                table, columns, _ = parts.table(target=k, normalize=False)
                return {"class": k, "output": float(scope.output[0, k]), "residual": float(scope.residual[0, k]),
                        "parts": [{"name": n, "value": float(v)} for n, v in zip(columns, table[0, 0])]}
            norms = [float(parts.input_term[0].norm())] + [float(c.norm()) for c in parts.contributions[0]]
            return {"residual": float_array(scope.residual[0]),
                    "parts": [{"name": n, "value": v} for n, v in zip(["input", *parts.groups], norms)]
                    + [{"name": "other", "value": float(parts.other[0].norm())}], "norms": True}

    def svd(self, index: int, k: int = 4) -> dict:
        """Top-``k`` singular values, eigen-inputs and eigen-outputs of ``F(x0)`` (Alg. 1 / Krylov)."""
        if not 1 <= k <= 16:
            raise ValueError(f"k must be between 1 and 16, got {k}")
        with self.lock:
            entry = self.entry(index)
            key = f"svd{k}"
            if key not in entry.cache:
                scope = self._full_scope(entry)
                k = min(k, scope.out_features - 1, scope.in_features - 1)
                if k < 1:
                    raise ValueError("the network has too few outputs for a singular value decomposition")
                entry.cache[key] = scope.svd(k)
            result = entry.cache[key]
            return {"values": result.singular_values.tolist(),
                    "inputs": [float_array(v) for v in result.eigen_inputs],
                    "outputs": [float_array(u) for u in result.eigen_outputs]}

"""The light augmentation of App. C.2 of the chest X-ray paper, applied to images and boxes alike, and
minority oversampling.

:class:`LightAugmentation` is a ``torchvision.transforms.v2`` transform: one call draws one set of
parameters and applies it to every input it is given — the image, ``tv_tensors.BoundingBoxes`` (a box
becomes the bounding rectangle of its four corners carried through the whole warp as
``tv_tensors.KeyPoints``), ``tv_tensors.Mask`` — so boxes stay consistent with the pixels.  In order
(App. C.2, after Gabruseva et al. 2020):

1. translation by ``(tx, ty)``, each uniform in ``[-translate, translate]`` pixels (paper: 32 px at 224 px);
2. Gaussian scaling by ``s ~ N(1, scale_sigma)``, clipped to ``1 ± 3 scale_sigma`` (the paper's σ did not
   survive in the text; 0.1 is the default here);
3. rotation by an angle uniform in ``[-degrees, degrees]`` (5°) and shear uniform in ``[-shear, shear]``
   degrees (2.5) — 1-3 as one affine warp about the image centre, bilinear, zero fill;
4. with probability ``perspective_p`` (½, "every second image") a perspective warp whose four corners move
   inwards by up to ``perspective`` (0.1) of half the image side;
5. gamma correction ``x -> x ** g`` with ``g = exp(N(0, gamma_sigma))`` (log-normal, σ 0.2) on the image only.

:class:`MinorityOversampler` repeats images of the rarer label groups (drawn with replacement) until every
group is as large as ``ratio`` times the largest — for the binary task, as many positives as negatives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from linearlens.data.xray.dataset import XraySet
from linearlens.data.xray.splits import stratification_key

__all__ = ["LightAugmentation", "MinorityOversampler", "AugmentedXrays", "augment_sample"]


class LightAugmentation(v2.Transform):
    """App. C.2 light augmentation (see the module docstring); parameters in pixels / degrees."""

    def __init__(
        self, translate: float = 32.0, scale_sigma: float = 0.1, degrees: float = 5.0, shear: float = 2.5,
        perspective: float = 0.1, perspective_p: float = 0.5, gamma_sigma: float = 0.2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        values = dict(translate=translate, scale_sigma=scale_sigma, degrees=degrees, shear=shear,
                      perspective=perspective, gamma_sigma=gamma_sigma)
        for name, value in values.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not 0 <= perspective_p <= 1 or perspective >= 1 or scale_sigma >= 1 / 3:
            raise ValueError("need 0 <= perspective_p <= 1, perspective < 1 and scale_sigma < 1/3")
        self.__dict__.update(values)
        self.perspective_p = perspective_p
        self.generator = generator

    def _uniform(self, bound: float) -> float:
        return float((torch.rand((), generator=self.generator) * 2 - 1) * bound)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        g = self.generator
        scale = 1 + float(torch.randn((), generator=g)) * self.scale_sigma
        params: dict[str, Any] = {
            "translate": [self._uniform(self.translate), self._uniform(self.translate)],
            "scale": min(max(scale, 1 - 3 * self.scale_sigma), 1 + 3 * self.scale_sigma),
            "angle": self._uniform(self.degrees),
            "shear": [self._uniform(self.shear), self._uniform(self.shear)],
            "gamma": math.exp(float(torch.randn((), generator=g)) * self.gamma_sigma),
            "endpoints": None,
        }
        if float(torch.rand((), generator=g)) < self.perspective_p:
            dx, dy = self.perspective * (width // 2), self.perspective * (height // 2)
            corners = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
            inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
            params["startpoints"] = corners
            params["endpoints"] = [
                [round(x + sx * float(torch.rand((), generator=g)) * dx),
                 round(y + sy * float(torch.rand((), generator=g)) * dy)]
                for (x, y), (sx, sy) in zip(corners, inward)
            ]
        return params

    def _warp(self, inpt: Any, params: dict[str, Any], mode: v2.InterpolationMode) -> Any:
        out = self._call_kernel(TF.affine, inpt, angle=params["angle"], translate=params["translate"],
                                scale=params["scale"], shear=params["shear"], interpolation=mode)
        if params["endpoints"] is not None:
            out = self._call_kernel(TF.perspective, out, params["startpoints"], params["endpoints"],
                                    interpolation=mode)
        return out

    def _warp_boxes(self, boxes: tv_tensors.BoundingBoxes, params: dict[str, Any]) -> tv_tensors.BoundingBoxes:
        # Warping the four corners through both steps and taking their bounding rectangle once is exact for
        # the composite projective map; warping the box step by step would enlarge it at every step.
        xyxy = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        x1, y1, x2, y2 = xyxy.as_subclass(Tensor).unbind(-1)
        corners = torch.stack([torch.stack(c, -1) for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], -2)
        points = tv_tensors.KeyPoints(corners.reshape(-1, 2), canvas_size=boxes.canvas_size)
        moved = self._warp(points, params, v2.InterpolationMode.NEAREST).as_subclass(Tensor).reshape(-1, 4, 2)
        out = torch.cat([moved.amin(1), moved.amax(1)], -1)
        out = tv_tensors.wrap(out.to(boxes.dtype), like=xyxy)
        return TF.convert_bounding_box_format(out, new_format=boxes.format)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return self._warp_boxes(inpt, params)
        is_image = isinstance(inpt, tv_tensors.Image) or (
            isinstance(inpt, Tensor) and not isinstance(inpt, (tv_tensors.BoundingBoxes, tv_tensors.Mask)))
        mode = v2.InterpolationMode.BILINEAR if is_image else v2.InterpolationMode.NEAREST
        out = self._warp(inpt, params, mode)
        if is_image:
            out = self._call_kernel(TF.adjust_gamma, out, gamma=params["gamma"])
        return out


def augment_sample(
    transform: v2.Transform, image: Tensor, boxes: Tensor, box_labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply ``transform`` to one ``(C, H, W)`` image and its ``(M, 4)`` xyxy boxes.

    Boxes are clamped to the image; boxes left with less than one pixel of area (moved out of view) are
    dropped together with their labels.
    """
    h, w = image.shape[-2:]
    tv_boxes = tv_tensors.BoundingBoxes(boxes.reshape(-1, 4), format="XYXY", canvas_size=(h, w))
    out_image, out_boxes = transform(tv_tensors.Image(image), tv_boxes)
    out_boxes = TF.clamp_bounding_boxes(out_boxes).as_subclass(Tensor)
    area = (out_boxes[:, 2] - out_boxes[:, 0]) * (out_boxes[:, 3] - out_boxes[:, 1])
    keep = area >= 1
    return out_image.as_subclass(Tensor), out_boxes[keep], box_labels[keep]


class AugmentedXrays(Dataset):
    """``(image float (1, H, W) in [0, 1], labels (K,))`` pairs of an :class:`XraySet`, augmented on the fly."""

    def __init__(self, data: XraySet, transform: v2.Transform | None = None) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.data.images[index]
        if self.transform is not None:
            image = self.transform(tv_tensors.Image(image)).as_subclass(Tensor)
        return image.float() / 255, self.data.labels[index]


class MinorityOversampler(Sampler[int]):
    """Every image once per epoch plus random repeats of the rarer label groups, in shuffled order.

    Groups are :func:`~linearlens.data.xray.splits.stratification_key` values (for one binary label:
    positives and negatives).  Each group is topped up, by drawing its members with replacement, to
    ``ceil(ratio * largest group)`` images.
    """

    def __init__(self, labels: Tensor | np.ndarray, ratio: float = 1.0, generator: torch.Generator | None = None):
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        keys = stratification_key(labels)
        self.groups = [np.nonzero(keys == k)[0] for k in np.unique(keys)]
        self.target = math.ceil(ratio * max(len(g) for g in self.groups))
        self.generator = generator

    def __len__(self) -> int:
        return sum(max(len(g), self.target) for g in self.groups)

    def __iter__(self) -> Iterator[int]:
        chosen = []
        for group in self.groups:
            extra = max(self.target - len(group), 0)
            picks = torch.randint(len(group), (extra,), generator=self.generator).numpy()
            chosen.append(np.concatenate([group, group[picks]]))
        order = np.concatenate(chosen)
        perm = torch.randperm(len(order), generator=self.generator).numpy()
        return iter(order[perm].tolist())

"""``linearlens explain``: explanation images for a trained checkpoint."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data import CIFAR10_CLASSES, load_cifar10
from ..explain import Explanation, explain, list_methods
from ..explain.visualize import save_explanation_grid
from ..models import load_checkpoint
from ..pretrained import load_pretrained
from . import CommandError


def parse_target(text: str):
    """``all``, ``predicted``, a class index or a class name."""
    if text in ("all", "predicted"):
        return text
    if text.isdigit():
        return int(text)
    if text in CIFAR10_CLASSES:
        return CIFAR10_CLASSES.index(text)
    raise CommandError(f"--target must be 'all', 'predicted', a class index or one of {', '.join(CIFAR10_CLASSES)}")


def load_images(paths: list[str]) -> list[torch.Tensor]:
    """Read image files as float ``(3, H, W)`` tensors in [0, 1], each at its own size."""
    images = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        try:
            with Image.open(p) as img:
                array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise CommandError(f"{p} is not a readable image ({type(err).__name__}: {err})") from None
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return images


def _targets_for(target, indices: list[int]):
    """The part of a per-image target (tensor or list) that belongs to ``indices``; other targets as they are."""
    if isinstance(target, (torch.Tensor, list, tuple)):
        return torch.as_tensor(target)[indices]
    return target


def write_explanations(model, images, out: Path, target, method: str, labels=None, name: str = "explanations") -> Path:
    """Explain ``images`` (a batch, or a list of images of any sizes) and save the picture grid; returns the PNG.

    Images of different sizes are explained in one batch per size, each at its own resolution.
    """
    images = list(images.unbind(0)) if isinstance(images, torch.Tensor) else list(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(i)
    per_image = [None] * len(images)
    for indices in by_size.values():
        exp = explain(model, torch.stack([images[i] for i in indices]), _targets_for(target, indices), method=method)
        for row, i in enumerate(indices):
            per_image[i] = _one(exp, row)
    return save_explanation_grid(out / f"{name}.png", images, per_image, labels=labels,
                                 class_names=list(CIFAR10_CLASSES))


def _one(exp: Explanation, row: int) -> Explanation:
    """The explanation of image ``row`` alone (batch dimension kept)."""
    pick = lambda t: None if t is None else t[row : row + 1]  # noqa: E731
    return replace(exp, attributions=pick(exp.attributions), targets=pick(exp.targets), outputs=pick(exp.outputs),
                   weights=pick(exp.weights), inputs=pick(exp.inputs), residual=pick(exp.residual),
                   channel_attributions=pick(exp.channel_attributions))


def run(args: argparse.Namespace) -> int:
    if bool(args.pretrained) == bool(args.checkpoint):
        raise CommandError("give either --checkpoint RUN_DIR or --pretrained (the network shipped in the package)")
    model = load_pretrained() if args.pretrained else load_checkpoint(args.checkpoint)
    out = Path(args.out)
    if args.image:
        images, labels = load_images(args.image), [Path(p).name for p in args.image]
    else:
        data = load_cifar10(args.data, args.split)
        bad = [i for i in args.indices if not 0 <= i < len(data)]
        if bad:
            raise CommandError(f"--indices {bad} out of range for {len(data)} images")
        sub = data.subset(args.indices)
        images, labels = sub.to_float(), [f"#{i}: {data.classes[int(c)]}" for i, c in zip(args.indices, sub.labels)]
    path = write_explanations(model, images, out, parse_target(args.target), args.method, labels)
    print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("explain", help="write explanation images for a trained model")
    parser.add_argument("--checkpoint", help="run directory written by 'linearlens train'")
    parser.add_argument("--pretrained", action="store_true", help="the CIFAR-10 B-cos network shipped in the package")
    parser.add_argument("--image", nargs="*", help="image files to explain (instead of data-set images)")
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--indices", type=int, nargs="+", default=[0, 100, 200, 300])
    parser.add_argument("--target", default="predicted", help="'predicted', 'all', a class index or name")
    parser.add_argument("--method", default="bcos", help=f"explanation method ({', '.join(list_methods())})")
    parser.add_argument("--out", default="outputs/explain")
    parser.set_defaults(func=run)

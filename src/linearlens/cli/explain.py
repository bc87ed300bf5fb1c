"""``linearlens explain``: explanation images for a trained checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import CIFAR10_CLASSES, load_cifar10
from ..explain import explain, list_methods
from ..explain.visualize import save_explanation_grid
from ..training import load_checkpoint
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


def load_images(paths: list[str]) -> torch.Tensor:
    """Read image files as a float batch in [0, 1]; all must share one size."""
    arrays = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"image {p} does not exist")
        arrays.append(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255)
    if len({a.shape for a in arrays}) > 1:
        raise CommandError("all --image files must have the same size")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def write_explanations(model, images, out: Path, target, method: str, labels=None, name: str = "explanations") -> Path:
    """Explain ``images`` and save the picture grid; returns the PNG path."""
    exp = explain(model, images, target, method=method)
    return save_explanation_grid(out / f"{name}.png", images, exp, labels=labels, class_names=list(CIFAR10_CLASSES))


def run(args: argparse.Namespace) -> int:
    model = load_checkpoint(args.checkpoint)
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
    parser.add_argument("--checkpoint", required=True, help="run directory written by 'linearlens train'")
    parser.add_argument("--image", nargs="*", help="image files to explain (instead of data-set images)")
    parser.add_argument("--data", default="embedded")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--indices", type=int, nargs="+", default=[0, 100, 200, 300])
    parser.add_argument("--target", default="predicted", help="'predicted', 'all', a class index or name")
    parser.add_argument("--method", default="bcos", help=f"explanation method ({', '.join(list_methods())})")
    parser.add_argument("--out", default="outputs/explain")
    parser.set_defaults(func=run)

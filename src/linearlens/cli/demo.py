"""``linearlens demo``: the main job — train a small B-cos network on the embedded CIFAR-10 subset,
print its test accuracy and write explanation images for a few test images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data import load_cifar10
from .explain import write_explanations
from .train import add_training_arguments, train_and_report


def run(args: argparse.Namespace) -> int:
    metrics, model = train_and_report(args)
    test = load_cifar10(args.data, "test")
    # One image of each of the first few classes, so the picture shows different objects.
    picks = [int(torch.nonzero(test.labels == c)[0]) for c in range(min(args.images, 10))]
    sub = test.subset(picks)
    images = sub.to_float()
    out = Path(args.out) / "explanations"
    labels = [f"{test.classes[int(c)]}" for c in sub.labels]
    predicted = write_explanations(model, images, out, "predicted", "bcos", labels, name="predicted_class")
    true = write_explanations(model, images, out, sub.labels, "bcos", labels, name="true_class")
    print(f"wrote {predicted} and {true}")
    print(json.dumps(metrics))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="main job: train on the embedded data and explain a few test images")
    add_training_arguments(parser, epochs=30, width=0.25, out="runs/demo")
    parser.add_argument("--images", type=int, default=6, help="number of test images to explain")
    parser.set_defaults(func=run)

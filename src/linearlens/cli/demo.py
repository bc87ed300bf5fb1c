"""``linearlens demo``: the main job — train a small B-cos network on the embedded CIFAR-10 subset and print
its test accuracy (training works), then explain a few test images with the pretrained network shipped in
the package (well trained, no training needed) and with the network just trained."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data import load_cifar10
from ..pretrained import load_pretrained, pretrained_info
from ..training import evaluate_accuracy
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
    written = []
    if not args.no_pretrained:
        pretrained = load_pretrained()
        accuracy = evaluate_accuracy(pretrained, test)
        info = pretrained_info()
        metrics["pretrained_test_accuracy"] = accuracy
        print(
            f"pretrained network (shipped, no training; {info.get('test_accuracy', float('nan')):.4f} on the 10,000 "
            f"CIFAR-10 test images): test accuracy {accuracy:.4f} on {len(test)} test images ({args.data})"
        )
        written.append(write_explanations(pretrained, images, out, "predicted", "bcos", labels, name="predicted_class"))
        written.append(write_explanations(pretrained, images, out, sub.labels, "bcos", labels, name="true_class"))
        out = Path(args.out) / "explanations_trained"  # the network trained above
    written.append(write_explanations(model, images, out, "predicted", "bcos", labels, name="predicted_class"))
    print("wrote " + ", ".join(str(p) for p in written))
    print(json.dumps(metrics))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="main job: train on the embedded data, explain test images with the shipped and trained nets"
    )
    add_training_arguments(parser, epochs=40, width=0.25, out="runs/demo", max_out=1, precision="auto")
    parser.add_argument("--images", type=int, default=6, help="number of test images to explain")
    parser.add_argument("--no-pretrained", action="store_true",
                        help="explain with the network just trained only (not the shipped pretrained one)")
    parser.set_defaults(func=run)

"""Strided vs BlurPool vs FLC downsampling in the same B-cos network on CIFAR-10 (chest X-ray paper Sec. 3.2).

Three copies of ``bcos_resnet18_cifar`` (v2 design, ``--width``) that differ only in ``antialias``
(``None``, ``"blurpool"``, ``"flc"``) are trained identically (same data, seed, epochs, schedule) and
compared on

* test accuracy (the whole CIFAR-10 test split);
* the grid pointing game (3x3 grids of correctly classified test images, App. C.2.1 of the B-cos paper,
  inherent explanations smoothed with a 3x3 mean filter as in Sec. 4);
* the grid-artifact score (:func:`linearlens.metrics.artifact.artifact_score`) of the inherent
  explanations of the same grids at the network's total stride 8 (three stride-2 stages).

Usage (from the repository root; reads ``../shared/data/cifar10``)::

    python experiments/antialias/run.py --phase train   # background: writes experiments/antialias/runs/*
    python experiments/antialias/run.py --phase eval    # writes experiments/antialias/results/*

A variant may be trained on its own with ``--variants flc``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from linearlens.data import load_cifar10
from linearlens.explain import explain
from linearlens.metrics.artifact import artifact_score
from linearlens.metrics.evaluation import box_plot, build_grids, grid_pointing_scores, summarize
from linearlens.models import create_model
from linearlens.training.trainer import TrainConfig, train

HERE = Path(__file__).resolve().parent
SHARED = Path("../shared/data/cifar10")
VARIANTS = {"strided": None, "blurpool": "blurpool", "flc": "flc"}
MODEL = "bcos_resnet18_cifar"
TOTAL_STRIDE = 8


def run_dir(variant: str, args: argparse.Namespace) -> Path:
    return Path(args.runs_dir) / variant


def train_variants(args: argparse.Namespace) -> None:
    for variant in args.variants:
        config = TrainConfig(
            out_dir=str(run_dir(variant, args)), model=MODEL,
            model_args={"width": args.width, "antialias": VARIANTS[variant], "design": "v2"},
            data=str(SHARED), train_limit_per_class=args.train_per_class, test_limit_per_class=100,
            epochs=args.epochs, batch_size=64, lr=1e-3, lr_final=1e-5, seed=0, threads=1,
        )
        start = time.process_time()
        train(config, resume=True, progress=False)
        print(f"{variant}: trained in {time.process_time() - start:.0f} s CPU", flush=True)


def evaluate(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    test = load_cifar10(str(SHARED), "test")
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": MODEL, "width": args.width, "epochs": args.epochs,
                     "train_per_class": args.train_per_class, "grids": args.grids, "total_stride": TOTAL_STRIDE,
                     "variants": {}}
    pointing, artifacts = {}, {}
    for variant in args.variants:
        model = create_model(MODEL, checkpoint=run_dir(variant, args))
        grids, accuracy = build_grids(model, test.images, test.labels, 3, args.grids, seed=0)
        scores, _ = grid_pointing_scores(model, grids, "bcos", smooth_kernel=3, batch_size=16, progress=False)
        maps = torch.cat([
            explain(model, grids.images[i : i + 16], grids.classes[i : i + 16], method="bcos").attributions
            for i in range(0, len(grids), 16)
        ])
        artifact = artifact_score(maps, TOTAL_STRIDE)
        pointing[variant], artifacts[variant] = scores, artifact
        history = json.loads((run_dir(variant, args) / "history.json").read_text())
        results["variants"][variant] = {
            "test_accuracy": accuracy, "grids": len(grids), "epochs_trained": len(history),
            "pointing_game": summarize(scores), "artifact_score": summarize(artifact),
        }
        print(f"{variant}: accuracy {accuracy:.4f}, pointing {scores.mean():.4f}, artifact {artifact.mean():.3f}",
              flush=True)
    box_plot(artifacts, out / "artifact_score.png", "Grid-artifact score of inherent explanations", "artifact score")
    box_plot(pointing, out / "pointing_game.png", "Grid pointing game (3x3)", "pointing score")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("train", "eval"), required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--grids", type=int, default=200)
    parser.add_argument("--runs-dir", default=str(HERE / "runs"))
    parser.add_argument("--results-dir", default=str(HERE / "results"))
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        print(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if not SHARED.is_dir():
        print(f"CIFAR-10 not found at {SHARED} (run from the repository root next to ../shared/data)", file=sys.stderr)
        return 1
    (train_variants if args.phase == "train" else evaluate)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

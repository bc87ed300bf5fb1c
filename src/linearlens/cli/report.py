"""``linearlens report``: one self-contained HTML file with explanations, residuals and evaluation results."""

from __future__ import annotations

import argparse

from . import CommandError


def run(args: argparse.Namespace) -> int:
    import torch

    from ..explorer import Explorer
    from ..explorer.atlas import NeuronAtlas
    from ..explorer.loading import atlas_cache_dir, embedded_examples, load_image_files, load_network
    from ..explorer.report import evaluation_section, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.top < 1:
        raise CommandError(f"--top must be >= 1, got {args.top}")
    for folder in args.evaluation:
        evaluation_section(folder)  # a wrong folder fails now, not after every image is explained
    model, classes, description = load_network(args.model)
    explorer = Explorer(model, class_names=classes, scores=args.scores, layer=args.layer)
    images = ([(n, x, None) for n, x in load_image_files(args.images)] if args.images
              else embedded_examples(per_class=1))
    for name, image, label in images:
        explorer.add_image(image, name, label)
    if args.atlas_layer:
        explorer.atlas = NeuronAtlas.compute(model, args.atlas_layer, args.atlas_data, limit=args.atlas_images,
                                             cache_dir=atlas_cache_dir(args.model, args.cache))
    units = args.atlas_units if args.atlas_units is not None else list(range(4))
    path = write_report(args.out, explorer, title=f"linearlens report: {description}", evaluations=args.evaluation,
                        atlas_units=units if args.atlas_layer else [], top=args.top)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB, {len(explorer.images)} images)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="one self-contained HTML file of explanations and evaluations")
    parser.add_argument("model", metavar="CHECKPOINT_OR_MODEL",
                        help="run directory of 'linearlens train', a registered model name, or file.py:factory")
    parser.add_argument("images", nargs="*", metavar="IMAGES", help="image files (default: embedded CIFAR-10 tests)")
    parser.add_argument("--evaluation", action="append", default=[], metavar="DIR",
                        help="output folder of 'linearlens evaluate' to include (repeatable)")
    parser.add_argument("--top", type=int, default=3, help="explained classes per image")
    parser.add_argument("--layer", help="spatial layer for the linear interpreter's units (classifiers)")
    parser.add_argument("--scores", default="sigmoid", choices=("sigmoid", "softmax", "raw"))
    parser.add_argument("--atlas-layer", help="include neuron-atlas units of this layer")
    parser.add_argument("--atlas-units", type=int, nargs="+", help="atlas units to show (default: 0-3)")
    parser.add_argument("--atlas-data", default="all", help="'embedded', a CIFAR-10 folder, or 'all'")
    parser.add_argument("--atlas-images", type=int, default=None)
    parser.add_argument("--cache", help="folder for cached atlases (default: CHECKPOINT/atlas-cache)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="outputs/report.html")
    parser.set_defaults(func=run)

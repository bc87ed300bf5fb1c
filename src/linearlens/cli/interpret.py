"""``linearlens interpret``: the linear interpreter (LinearScope) of a classifier on CIFAR-10 images.

Writes ``summary.json`` (residual share of the top-1 score, Table 3; layer-wise bias contributions,
Theorem 1), ``contributions.png`` (Fig. 4) and ``pixel_votes.png`` (pixel discussions and votes,
Fig. 3) for a checkpoint written by ``linearlens train`` or a registered model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data import load_cifar10
from ..figures import save_figure, subplots
from ..interpret import LinearScope, bias_contributions, pixel_discussions
from ..interpret.plots import contribution_bars, pixel_vote_grid
from ..models import create_model, list_models
from . import CommandError


def _model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        from ..training import load_checkpoint

        return load_checkpoint(args.checkpoint)
    if args.model not in list_models():
        raise CommandError(f"unknown model {args.model!r}; registered: {', '.join(list_models())}")
    torch.manual_seed(args.seed)
    return create_model(args.model).eval()


def run(args: argparse.Namespace) -> int:
    model = _model(args).eval()
    data = load_cifar10(args.data, args.split)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bad = [i for i in args.indices if not 0 <= i < len(data)]
    if bad:
        raise CommandError(f"--indices {bad} out of range for {len(data)} images")
    per_class = [torch.nonzero(data.labels == c).flatten()[: args.per_class] for c in range(len(data.classes))]
    stats = data.subset(torch.cat(per_class).tolist()).to_float()

    scope = LinearScope(model, stats, centering=args.centering)
    if scope.output.dim() != 2:
        raise CommandError(f"'interpret' needs a classifier (outputs (N, classes)), got outputs {scope.out_shape}")
    top = scope.output.argmax(1, keepdim=True)
    share = scope.residual.gather(1, top).squeeze(1) / scope.output.gather(1, top).squeeze(1)
    groups = None if args.groups == "module" else args.groups
    parts = bias_contributions(model, stats, groups=groups, centering=args.centering, chunk_size=4)
    table, columns, _ = parts.table()
    summary = {
        "images": len(stats),
        "residual_share_top1": {
            "mean": float(share.mean()), "std": float(share.std()), "median": float(share.median()),
        },
        "contributions_top1_mean": dict(zip(columns, table[:, 0].mean(0).tolist())),
        "decomposition_max_abs_error": float((parts.total() - parts.output).abs().max()),
    }
    fig, ax = subplots(figsize=(6, 3.6))
    contribution_bars(ax, table[:, 0], columns, f"contributions to the top-1 score, {len(stats)} images\n"
                      f"residual share {float(share.mean()):.0%} ± {float(share.std()):.0%}")
    save_figure(fig, out / "contributions.png", dpi=130)

    sub = data.subset(args.indices)
    images = sub.to_float()
    pd = pixel_discussions(model, images, "all", centering=args.centering)
    labels = [f"#{i}: {data.classes[int(c)]}" for i, c in zip(args.indices, sub.labels)]
    drawn = pixel_vote_grid(images, pd, data.classes, out / "pixel_votes.png", labels=labels)
    summary["pixel_votes"] = [{"index": i, **e} for i, e in zip(args.indices, drawn["images"])]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"residual share of the top-1 score: {float(share.mean()):.1%} ± {float(share.std()):.1%} "
          f"over {len(stats)} images")
    print(f"wrote {out / 'summary.json'}, {out / 'contributions.png'}, {out / 'pixel_votes.png'}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("interpret", help="linear interpreter: residual share, layer biases, pixel votes")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="run directory written by 'linearlens train'")
    source.add_argument("--model", help="a registered model, randomly initialised (for a quick look)")
    parser.add_argument("--data", default="embedded", help="'embedded' or a CIFAR-10 folder")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--per-class", type=int, default=10, help="images per class for the statistics")
    parser.add_argument("--indices", type=int, nargs="+", default=[0, 100, 200, 300], help="images for pixel votes")
    parser.add_argument("--groups", default="parent", choices=("parent", "module"),
                        help="one layer per parent module (e.g. conv + BN + ReLU of a block) or per leaf module")
    parser.add_argument("--centering", default="frozen", choices=("frozen", "linear"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/interpret")
    parser.set_defaults(func=run)

"""``linearlens interpret``: the linear interpreter (LinearScope) of a classifier on CIFAR-10 images.

Writes ``summary.json`` (how much of the top-1 score the residual ``r(x0)`` carries, Table 3;
layer-wise bias contributions, Theorem 1), ``contributions.png`` (Fig. 4) and ``pixel_votes.png``
(pixel discussions and votes, Fig. 3) for a checkpoint written by ``linearlens train`` or a
registered model.

The residual's share is reported as ``|r| / (|F(x0) x0| + |r|)`` (in [0, 1]) with its median and
quantiles: the plain ratio ``r / f(x0)`` explodes for scores near zero, so its mean and standard
deviation say nothing.  For a B-cos network the residual is exactly its logit bias ``b`` (the B-cos
layers are bias-free, Eq. (16) of the B-cos paper), the same for every image and class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..data import load_cifar10
from ..figures import save_figure, subplots
from ..interpret import LinearScope, bias_contributions, pixel_discussions
from ..interpret.plots import contribution_bars, pixel_vote_grid
from ..layers import LogitLayer
from ..models import create_model, list_models, load_checkpoint
from ..training.checkpoint import write_json
from . import CommandError


def _model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        return load_checkpoint(args.checkpoint)
    if args.model not in list_models():
        raise CommandError(f"unknown model {args.model!r}; registered: {', '.join(list_models())}")
    torch.manual_seed(args.seed)
    return create_model(args.model).eval()


def _quantiles(values: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(values.double(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64))
    return {"median": float(q[2]), "q25": float(q[1]), "q75": float(q[3]), "q05": float(q[0]), "q95": float(q[4]),
            "mean": float(values.double().mean())}


def residual_statistics(score: torch.Tensor, residual: torch.Tensor) -> dict:
    """How much of ``score = F(x0) x0 + r`` the residual ``r`` carries, per image, summarised robustly.

    ``residual_fraction`` is ``|r| / (|F(x0) x0| + |r|)`` in [0, 1] (0 when both parts vanish);
    ``residual_over_score`` is the signed ratio ``r / score`` by quantiles only, since it is unbounded
    for scores near zero; ``residual`` and ``score`` give the raw values.
    """
    linear = (score - residual).abs()
    denominator = linear + residual.abs()
    fraction = torch.where(denominator > 0, residual.abs() / denominator.clamp_min(1e-300), torch.zeros_like(linear))
    ratio = residual / score
    stats = {
        "residual_fraction": _quantiles(fraction),
        "residual": _quantiles(residual),
        "score": _quantiles(score),
        "images": int(score.numel()),
    }
    finite = ratio[torch.isfinite(ratio)]
    if finite.numel():
        stats["residual_over_score"] = {k: v for k, v in _quantiles(finite).items() if k != "mean"}
    return stats


def logit_bias_check(model: torch.nn.Module, residual: torch.Tensor) -> dict:
    """For a network ending in a :class:`LogitLayer` (B-cos): its bias and how far ``r`` is from it."""
    layers = [m for m in model.modules() if isinstance(m, LogitLayer)]
    if len(layers) != 1:
        return {}
    bias = layers[0].bias
    deviation = float((residual - bias).abs().max())
    # Bias-free (B-cos) layers before it: r(x0) = b up to rounding; other layers add their own biases.
    return {"logit_bias": bias, "max_abs_residual_minus_bias": deviation,
            "residual_is_logit_bias": deviation <= 1e-4 * (1 + abs(bias))}


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
    residual_stats = residual_statistics(scope.output.gather(1, top).squeeze(1),
                                         scope.residual.gather(1, top).squeeze(1))
    residual_stats.update(logit_bias_check(model, scope.residual))
    fraction = residual_stats["residual_fraction"]
    groups = None if args.groups == "module" else args.groups
    parts = bias_contributions(model, stats, groups=groups, centering=args.centering, chunk_size=4)
    table, columns, _ = parts.table()
    summary = {
        "images": len(stats),
        "residual_top1": residual_stats,
        "contributions_top1_mean": dict(zip(columns, table[:, 0].mean(0).tolist())),
        "decomposition_max_abs_error": float((parts.total() - parts.output).abs().max()),
    }
    fig, ax = subplots(figsize=(6, 3.6))
    contribution_bars(ax, table[:, 0], columns, f"contributions to the top-1 score, {len(stats)} images\n"
                      f"|r| / (|F(x0)x0| + |r|): median {fraction['median']:.0%} "
                      f"(IQR {fraction['q25']:.0%}-{fraction['q75']:.0%})")
    save_figure(fig, out / "contributions.png", dpi=130)

    sub = data.subset(args.indices)
    images = sub.to_float()
    pd = pixel_discussions(model, images, "all", centering=args.centering)
    labels = [f"#{i}: {data.classes[int(c)]}" for i, c in zip(args.indices, sub.labels)]
    drawn = pixel_vote_grid(images, pd, data.classes, out / "pixel_votes.png", labels=labels)
    summary["pixel_votes"] = [{"index": i, **e} for i, e in zip(args.indices, drawn["images"])]
    write_json(out / "summary.json", summary, sort_keys=False)
    print(f"residual share of the top-1 score, |r| / (|F(x0)x0| + |r|): median {fraction['median']:.1%} "
          f"(quartiles {fraction['q25']:.1%}, {fraction['q75']:.1%}; "
          f"5-95%: {fraction['q05']:.1%}-{fraction['q95']:.1%}) over {len(stats)} images")
    if residual_stats.get("residual_is_logit_bias"):
        print(f"the residual is the logit bias b = {residual_stats['logit_bias']:.4f} of the B-cos network "
              f"(largest deviation {residual_stats['max_abs_residual_minus_bias']:.1e}): its layers are bias-free")
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

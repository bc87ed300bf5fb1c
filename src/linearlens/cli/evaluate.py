"""``linearlens evaluate``: explanation methods x a metric on a checkpoint and a data set.

Writes ``results.json`` (a summary table per method), ``scores.json`` (every score) and
``boxplot.png`` to ``--out``.  Metrics: ``grid-pointing`` (grid pointing game, Sec. 4 and
App. C.2.1 of the B-cos paper) and ``degradation`` (MoRF pixel flipping of ``--images`` images spread
evenly over the set, area under the curve of the predicted class's softmax probability when 4x4
patches are replaced by their mean colour; lower is better).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._threads import num_threads
from ..data import load_cifar10
from ..explain import MethodNotApplicableError, list_methods
from ..metrics import Grids, area_under_curve
from ..metrics.evaluation import (
    box_plot,
    build_grids,
    classify,
    degradation_scores,
    grid_pointing_scores,
    summarize,
)
from ..models import create_model, load_checkpoint
from ..training.checkpoint import write_json
from ..training.distributed import DistributedContext, distributed, run_sharded
from . import CommandError

DEFAULT_METHODS = "bcos,gradient,ixg,ig,deeplift,gradcam,layercam,guided_backprop,deconvnet,lime,rise,occlusion"
METRICS = ("grid-pointing", "degradation")


def parse_options(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``method.key=value`` pairs (value parsed as JSON when possible) into per-method option dicts."""
    options: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise CommandError(f"--option must look like method.key=value, got {item!r}")
        if method not in options:
            raise CommandError(f"--option {item!r} names method {method!r}, which is not in --methods")
        try:
            options[method][name] = json.loads(value)
        except json.JSONDecodeError:
            options[method][name] = value
    return options


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _option_error(method: str, options: dict[str, Any], err: TypeError) -> CommandError:
    """A method called with ``--option`` values it does not take: the user's mistake, named as such."""
    return CommandError(f"--option {', '.join(f'{method}.{k}' for k in options)}: {err}")


def reproducing_command(args: argparse.Namespace) -> str:
    """The ``linearlens evaluate`` command line that reproduces this run."""
    parts = ["linearlens", "evaluate"]
    if args.checkpoint:
        parts += ["--checkpoint", args.checkpoint]
    else:
        parts += ["--model", args.model] + (["--model-args", args.model_args] if args.model_args else [])
    parts += ["--data", args.data, "--split", args.split, "--methods", args.methods, "--metric", args.metric]
    if args.limit_per_class is not None:
        parts += ["--limit-per-class", str(args.limit_per_class)]
    if args.metric == "grid-pointing":
        parts += ["--grids", str(args.grids), "--grid-size", str(args.grid_size), "--smooth", str(args.smooth)]
        if args.include_misclassified:
            parts.append("--include-misclassified")
    else:
        parts += ["--images", str(args.images), "--patch-size", str(args.patch_size), "--steps", str(args.steps)]
    for item in args.option:
        parts += ["--option", item]
    parts += ["--seed", str(args.seed), "--out", args.out]
    return " ".join(shlex.quote(p) for p in parts)


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args``: a JSON object of keyword arguments, with an error that names the option."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CommandError(f"--model-args must be a JSON object such as '{{\"width\": 0.25}}': {err}") from None
    if not isinstance(value, dict):
        raise CommandError(f"--model-args must be a JSON object (keyword arguments), got {type(value).__name__}")
    return value


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    if args.checkpoint:
        return load_checkpoint(args.checkpoint), str(args.checkpoint)
    if not args.model:
        raise CommandError("pass --checkpoint DIR (or --model NAME for a randomly initialised network)")
    torch.manual_seed(args.seed)
    model_args = parse_model_args(args.model_args)
    try:
        model = create_model(args.model, **model_args)
    except TypeError as err:  # a constructor rejecting a keyword: the user's --model-args
        raise CommandError(f"--model-args: {err}") from None
    return model.eval(), f"{args.model} (random init, seed {args.seed})"


def run(args: argparse.Namespace) -> int:
    # Under torchrun every rank scores its shard of the grids / images; rank 0 writes the results.
    with num_threads(args.threads), distributed(args.device) as ctx:
        return _run(args, ctx)


def _run(args: argparse.Namespace, ctx: DistributedContext | None = None) -> int:
    ctx = ctx or DistributedContext()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in list_methods()]
    if unknown:
        raise CommandError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(list_methods())}")
    if len(set(methods)) != len(methods):
        raise CommandError("--methods lists a method twice")
    options = parse_options(args.option, methods)
    model, model_name = load_model(args)
    model = model.to(ctx.device)
    data = load_cifar10(args.data, args.split, args.limit_per_class)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress

    settings: dict[str, Any] = {"seed": args.seed, "options": options}
    scores: dict[str, torch.Tensor] = {}
    table: dict[str, dict[str, Any]] = {}
    if args.metric == "grid-pointing":
        grids, accuracy = build_grids(model, data.images, data.labels, args.grid_size, args.grids, args.seed,
                                      require_correct=not args.include_misclassified)
        settings.update(grid_size=args.grid_size, grids=len(grids), smooth=args.smooth,
                        include_misclassified=args.include_misclassified)
        for method in tqdm(methods, desc="methods", disable=not progress):
            try:
                s, sec = run_sharded(lambda i, method=method: grid_pointing_scores(
                    model, Grids(grids.images[i].to(ctx.device), grids.classes[i], grids.sources[i], grids.n),
                    method, options[method], args.smooth or None, args.batch_size, progress), len(grids), ctx)
            except MethodNotApplicableError as err:  # any other error is a failure, not a skip
                table[method] = {"error": str(err)}
                tqdm.write(f"{method}: skipped ({err})", file=sys.stderr)
                continue
            except TypeError as err:
                if not options[method]:
                    raise  # no user option involved: a bug, keeps its traceback
                raise _option_error(method, options[method], err) from err
            scores[method] = s
            table[method] = {**summarize(s), "seconds_per_image": sec}
        ylabel = "grid pointing score"
    else:
        # Evenly spaced over the set, which folder-ordered sources sort by class.
        pick = torch.linspace(0, len(data) - 1, min(args.images, len(data))).round().long()
        images, labels = data.images[pick], data.labels[pick]
        settings.update(images=len(images), patch_size=args.patch_size, steps=args.steps, order="morf")
        for method in tqdm(methods, desc="methods", disable=not progress):
            try:
                curves, steps, sec = run_sharded(lambda i, method=method: degradation_scores(
                    model, images[i].to(ctx.device), method, options[method], args.patch_size, args.steps, "morf",
                    args.batch_size, args.seed, progress), len(images), ctx)
            except MethodNotApplicableError as err:  # any other error is a failure, not a skip
                table[method] = {"error": str(err)}
                tqdm.write(f"{method}: skipped ({err})", file=sys.stderr)
                continue
            except TypeError as err:
                if not options[method]:
                    raise  # no user option involved: a bug, keeps its traceback
                raise _option_error(method, options[method], err) from err
            s = area_under_curve(curves, steps)
            scores[method] = s
            table[method] = {**summarize(s), "seconds_per_image": sec, "mean_curve": curves.mean(0).tolist()}
        # Reference: patches removed in random order (the attribution is then ignored).
        curves, steps, _ = degradation_scores(model, images, "gradcam", {}, args.patch_size, args.steps, "random",
                                              args.batch_size, args.seed, False)
        scores["random order"] = area_under_curve(curves, steps)
        table["random order"] = {**summarize(scores["random order"]), "seconds_per_image": 0.0,
                                 "mean_curve": curves.mean(0).tolist()}
        accuracy = float((classify(model, images).argmax(1) == labels).float().mean())
        ylabel = "MoRF AUC (lower is better)"

    if not ctx.is_main:
        return 0
    command = reproducing_command(args)
    results = {
        "command": command, "metric": args.metric, "model": model_name, "data": args.data, "split": args.split,
        "accuracy": accuracy, "settings": settings, "methods": table,
    }
    write_json(out / "scores.json", {k: v.tolist() for k, v in scores.items()})
    write_json(out / "results.json", results, sort_keys=False)  # last: its presence means the run finished
    if scores:
        box_plot(scores, out / "boxplot.png", f"{args.metric} - {model_name}", ylabel)
    width = max(len(m) for m in table)
    print(f"{'method':<{width}}  {'mean':>7}  {'median':>7}  {'s/image':>8}")
    for method, row in table.items():
        if "error" in row:
            print(f"{method:<{width}}  skipped: {row['error'][:80]}")
        else:
            print(f"{method:<{width}}  {row['mean']:7.4f}  {row['median']:7.4f}  {row['seconds_per_image']:8.4f}")
    print(f"wrote {out / 'results.json'}, {out / 'scores.json'}" + (f", {out / 'boxplot.png'}" if scores else ""))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="score explanation methods with a localisation metric")
    parser.add_argument("--checkpoint", help="run directory written by 'linearlens train'")
    parser.add_argument("--model", help="evaluate a randomly initialised registered model instead (smoke tests)")
    parser.add_argument("--model-args", help="JSON arguments for --model, e.g. '{\"width\": 0.25}'")
    parser.add_argument("--data", default="embedded", help="'embedded' or a CIFAR-10 folder")
    parser.add_argument("--split", default="test", choices=("train", "test"))
    parser.add_argument("--limit-per-class", type=positive_int, default=None,
                        help="load at most this many images per class")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated explanation methods")
    parser.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="method option, e.g. rise.n_masks=100 (repeatable)")
    parser.add_argument("--metric", default="grid-pointing", choices=METRICS)
    parser.add_argument("--grids", type=positive_int, default=500, help="number of grid images (grid-pointing)")
    parser.add_argument("--grid-size", type=positive_int, default=3, help="cells per grid side (grid-pointing)")
    parser.add_argument("--include-misclassified", action="store_true",
                        help="build grids from misclassified images too (untrained models, smoke tests)")
    parser.add_argument("--smooth", type=int, default=3, help="smoothing kernel for non-perturbation maps; 0 = none")
    parser.add_argument("--images", type=positive_int, default=200, help="number of images (degradation)")
    parser.add_argument("--patch-size", type=positive_int, default=4, help="patch side (degradation)")
    parser.add_argument("--steps", type=positive_int, default=17, help="points on each degradation curve")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per explanation call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    parser.add_argument("--out", default="outputs/evaluate")
    parser.set_defaults(func=run)

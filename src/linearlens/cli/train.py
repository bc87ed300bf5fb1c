"""``linearlens train``: train a B-cos classifier on CIFAR-10 (App. C.1 of the B-cos paper)."""

from __future__ import annotations

import argparse
import json

from ..models import list_models
from ..models.bcos_cifar import cifar_temperature
from ..training import TrainConfig, train
from ..training.precision import PRECISIONS, resolve_precision
from . import CommandError


def add_training_arguments(
    parser: argparse.ArgumentParser, epochs: int, width: float, out: str, max_out: int = 2, precision: str = "fp32"
) -> None:
    """Arguments shared by ``train`` and ``demo``."""
    parser.add_argument("--data", default="embedded", help="'embedded' or a CIFAR-10 folder (ImageFolder or batches)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-final", type=float, default=1e-5)
    parser.add_argument("--b", type=float, default=2.0, help="the B-cos exponent B")
    parser.add_argument("--temperature", type=float, default=None,
                        help="output temperature T (default: App. C.1.1's value for B, listed for 1 <= B <= 2.5)")
    parser.add_argument("--max-out", type=int, default=max_out, help="MaxOut units per neuron (1 = plain)")
    parser.add_argument("--width", type=float, default=width, help="channel multiplier of App. C.1.1's network")
    parser.add_argument("--train-per-class", type=int, default=None, help="first n training images per class")
    parser.add_argument("--test-per-class", type=int, default=None, help="use only the first n test images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'")
    parser.add_argument("--contiguous", action="store_true",
                        help="train on contiguous (NCHW) batches instead of channels-last ones (CPU)")
    parser.add_argument("--precision", choices=PRECISIONS, default=precision,
                        help="bf16: autocast the forward pass to bfloat16 (mixed precision); auto: bf16 where the "
                             f"device computes it natively (this machine: {resolve_precision('auto')}), else fp32 "
                             f"(default {precision})")
    parser.add_argument("--out", default=out, help="run directory (checkpoints, config, history)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a run")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace, model: str = "bcos_cifar") -> TrainConfig:
    """The :class:`TrainConfig` described by parsed training arguments."""
    if model not in list_models():
        raise ValueError(f"unknown model {model!r}")
    if not args.b >= 1:  # also NaN
        raise CommandError(f"--b must be a number >= 1 (B = 1 is a linear network), got {args.b}")
    model_args = {"b": args.b, "max_out": args.max_out, "width": args.width, "width_scaled_gamma": True}
    if args.temperature is not None:
        if not args.temperature > 0:
            raise CommandError(f"--temperature must be > 0, got {args.temperature}")
        model_args["temperature"] = args.temperature
    else:
        try:
            cifar_temperature(args.b)
        except ValueError:
            raise CommandError(f"--b {args.b}: App. C.1.1 lists output temperatures for 1 <= B <= 2.5 only; "
                               "pass --temperature T") from None
    return TrainConfig(
        out_dir=args.out,
        model=model,
        model_args=model_args,
        data=args.data,
        train_limit_per_class=args.train_per_class,
        test_limit_per_class=args.test_per_class,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_final=args.lr_final,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        precision=args.precision,
        channels_last=not args.contiguous,
    )


def train_and_report(args: argparse.Namespace):
    """Train as the arguments say and print the test accuracy; returns ``(metrics, model)``."""
    metrics = train(config_from_args(args), resume=not args.no_resume, progress=not args.quiet)
    model = metrics.pop("model")
    print(f"test accuracy: {metrics['test_accuracy']:.4f} on {metrics['test_images']} test images ({args.data})")
    return metrics, model


def run(args: argparse.Namespace) -> int:
    metrics, _ = train_and_report(args)
    print(json.dumps(metrics))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a B-cos network on CIFAR-10 (resumable)")
    add_training_arguments(parser, epochs=30, width=0.5, out="runs/bcos_cifar")
    parser.set_defaults(func=run)

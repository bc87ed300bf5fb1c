"""CPU training recipe: CIFAR-10 test accuracy against process CPU-seconds, linearlens vs the ``bcos`` package.

One process trains two copies of the same network (App. C.1.1, B = 2, no biases, same initial weights,
same batches, same augmentation, same optimiser and schedule): one built from linearlens's
``BcosConv2d`` and one from the ``bcos`` 0.1.3 package's layers (``package_net.py``).  The two arms
run alternately, a segment of ``--segment`` CPU-seconds each, so that both see the same machine load.
Each arm gets a budget of ``--budget`` CPU-seconds of training; its learning rate follows a cosine
from ``--lr`` to ``--lr-final`` over the fraction of that budget it has spent, so a faster layer
simply takes more steps in the same budget.  Every ``--eval-every`` CPU-seconds of training an arm is
evaluated on the test split (evaluation time is not counted as training) and a record is appended to
``<out>/log.json``; the linearlens arm's weights are saved to ``<out>/linearlens/`` (safetensors +
config.json, loadable with ``linearlens.training.checkpoint.load_checkpoint``).

Usage (from the repository root; 1 thread)::

    nohup python experiments/cpu_recipe/run_recipe.py --out experiments/cpu_recipe/results/w025_m2 \
        --width 0.25 --max-out 2 --budget 1500 > experiments/cpu_recipe/results/w025_m2.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from linearlens.data import augment_batch, load_cifar10
from linearlens.models import create_model
from linearlens.training import bce_loss, cosine_lr, evaluate_accuracy
from linearlens.training.checkpoint import save_model, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package_net import PackageCifarNet  # noqa: E402  (same folder, run as a script)


@dataclass
class Arm:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    spent: float = 0.0  # training seconds on the budget's clock (--clock)
    cpu: float = 0.0  # training CPU-seconds spent
    wall: float = 0.0  # training wall-seconds spent
    steps: int = 0
    seen: int = 0
    since_eval: float = 0.0
    order: torch.Tensor | None = None
    loss_sum: float = 0.0
    loss_count: int = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--out", required=True)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--max-out", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-final", type=float, default=1e-5)
    parser.add_argument("--budget", type=float, default=1500.0, help="training CPU-seconds per arm")
    parser.add_argument("--segment", type=float, default=60.0, help="CPU-seconds per arm before switching")
    parser.add_argument("--eval-every", type=float, default=150.0, help="training CPU-seconds between evaluations")
    parser.add_argument("--arms", default="linearlens,bcos")
    parser.add_argument("--test-per-class", type=int, default=None, help="default: all 10,000 test images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="what --budget, --segment and --eval-every count: process CPU-seconds (robust to "
                             "load) or wall-seconds of training (minutes of an idle machine's cores)")
    parser.add_argument("--channels-last", action="store_true", help="feed both arms channels-last batches")
    parser.add_argument("--bf16", action="store_true",
                        help="both arms train under bfloat16 autocast (mixed precision); evaluation stays float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if not Path(args.data).is_dir():
        print(f"CIFAR-10 folder {args.data} not found (expected ../shared/data/cifar10 from the repo root)")
        return 2
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_set = load_cifar10(args.data, "train")
    test_set = load_cifar10(args.data, "test", args.test_per_class)
    print(f"{len(train_set)} training, {len(test_set)} test images; threads {torch.get_num_threads()}", flush=True)

    model_args = {"b": 2.0, "max_out": args.max_out, "width": args.width, "width_scaled_gamma": True}
    torch.manual_seed(args.seed)
    base = create_model("bcos_cifar", **model_args)
    arms: list[Arm] = []
    for name in args.arms.split(","):
        if name == "linearlens":
            model = base
        elif name == "bcos":
            model = PackageCifarNet(base)  # copies the initial weights
        else:
            parser.error(f"unknown arm {name!r}")
        arms.append(Arm(name, model, torch.optim.Adam(model.parameters(), lr=args.lr),
                        torch.Generator().manual_seed(args.seed)))
    n = len(train_set)
    steps_per_epoch = math.ceil(n / args.batch_size)
    meta = {"args": vars(args), "model_args": model_args, "train_images": n, "test_images": len(test_set),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "records": []}
    log: list[dict] = meta["records"]

    def evaluate(arm: Arm) -> None:
        t0 = time.process_time()
        acc = evaluate_accuracy(arm.model, test_set)
        record = {
            "arm": arm.name, "train_cpu_s": round(arm.cpu, 2), "train_wall_s": round(arm.wall, 2),
            "threads": torch.get_num_threads(),
            "steps": arm.steps, "epochs": round(arm.seen / n, 3), "test_accuracy": acc,
            "train_loss": arm.loss_sum / max(arm.loss_count, 1), "eval_cpu_s": round(time.process_time() - t0, 2),
            "load_avg_1min": round(os.getloadavg()[0], 2), "time": time.strftime("%H:%M:%S"),
        }
        arm.loss_sum, arm.loss_count, arm.since_eval = 0.0, 0, 0.0
        log.append(record)
        write_json(out / "log.json", meta)
        if arm.name == "linearlens":
            save_model(out / "linearlens", arm.model, "bcos_cifar", model_args,
                       {"recipe": vars(args), "test_accuracy": acc, "train_cpu_s": arm.cpu, "steps": arm.steps})
        print(json.dumps(record), flush=True)

    for arm in arms:
        evaluate(arm)
    while any(arm.spent < args.budget for arm in arms):
        for arm in arms:
            if arm.spent >= args.budget:
                continue
            arm.model.train()
            segment_end = min(arm.spent + args.segment, args.budget)
            while arm.spent < segment_end:
                c0, w0 = time.process_time(), time.perf_counter()
                if arm.order is None or arm.steps % steps_per_epoch == 0:
                    arm.order = torch.randperm(n, generator=arm.generator)
                i = arm.steps % steps_per_epoch
                idx = arm.order[i * args.batch_size : (i + 1) * args.batch_size]
                x = augment_batch(train_set.images[idx].float().div_(255), arm.generator)
                if args.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = cosine_lr(int(1e6 * arm.spent / args.budget), 10**6, args.lr, args.lr_final)
                for group in arm.optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                    loss = bce_loss(arm.model(x), train_set.labels[idx])
                arm.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                arm.optimizer.step()
                arm.steps += 1
                arm.seen += len(idx)
                arm.loss_sum += float(loss.detach())
                arm.loss_count += 1
                dc, dw = time.process_time() - c0, time.perf_counter() - w0
                arm.cpu += dc
                arm.wall += dw
                arm.spent += dw if args.clock == "wall" else dc
                arm.since_eval += dw if args.clock == "wall" else dc
                if not math.isfinite(float(loss.detach())):
                    print(f"{arm.name}: loss is {float(loss)} at step {arm.steps}", flush=True)
                    return 1
                # Within a segment too (a segment may be the whole budget), and always at the budget's end.
                if arm.since_eval >= args.eval_every or arm.spent >= args.budget:
                    evaluate(arm)
    print(json.dumps({"final": {a.name: [r for r in log if r["arm"] == a.name][-1] for a in arms}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

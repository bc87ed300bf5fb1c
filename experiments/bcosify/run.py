"""B-cosification on CIFAR-10 at CPU scale: a converted-and-fine-tuned ResNet against the same B-cos
network trained from scratch.

1. ``conventional``: a torchvision ResNet (BasicBlock, one block per stage, ReLU, batch norm, max
   pooling, biases in the head) trained with BCE (Eq. (16) of the B-cos paper) on images in [0, 1].
2. ``finetune``: :func:`linearlens.conversion.to_bcos` turns it into a B-cos network at B = 1 (same
   function), then fine-tunes while :func:`~linearlens.conversion.set_bcosification` raises B to 2 and
   anneals biases, ReLUs, max pooling and batch-norm shifts away over the first ``--anneal`` of the
   steps; :func:`~linearlens.conversion.finalize_bcos` then removes them and training continues.
   :func:`~linearlens.conversion.assert_bcos_final` checks the result.
3. ``scratch``: the identical finished B-cos architecture (``to_bcos`` of an untrained ResNet at
   progress 1, finalised) trained from random weights for as many epochs as conventional + fine-tune.

Test accuracy after every epoch, process CPU time at 1 thread, and the 3x3 grid pointing game
(App. C.2.1; inherent explanation, 3x3 smoothing) of both B-cos networks.  Writes
``experiments/bcosify/results/results.json`` (incrementally) and ``results/table.md``.

    python experiments/bcosify/run.py            # reads ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock

from linearlens.conversion import assert_bcos_final, finalize_bcos, progress_at, set_bcosification, to_bcos
from linearlens.data import ImageSet, augment_batch, load_cifar10
from linearlens.metrics.evaluation import build_grids, grid_pointing_scores, summarize
from linearlens.training import bce_loss, cosine_lr, evaluate_accuracy

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data" / "cifar10"


def conventional_resnet() -> nn.Module:
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)


def train_epochs(
    model: nn.Module, train_set: ImageSet, test_set: ImageSet, epochs: int, lr: float, seed: int, tag: str,
    results: dict, save, on_step=None,
) -> list[dict]:
    """Adam + cosine schedule with BCE; test accuracy and cumulative CPU seconds after every epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    batch = 64
    steps = math.ceil(len(train_set) / batch)
    total = steps * epochs
    history, cpu = [], 0.0
    for epoch in range(epochs):
        model.train()
        t0 = time.process_time()
        order = torch.randperm(len(train_set), generator=generator)
        loss_sum = 0.0
        for step in range(steps):
            if on_step is not None:
                on_step(epoch * steps + step, total, optimizer)
            idx = order[step * batch : (step + 1) * batch]
            x = augment_batch(train_set.images[idx].float().div_(255), generator)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(epoch * steps + step, total, lr, lr * 1e-2)
            loss = bce_loss(model(x), train_set.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
        cpu += time.process_time() - t0
        accuracy = evaluate_accuracy(model, test_set)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / len(train_set), "test_accuracy": accuracy,
                        "cpu_seconds": cpu})
        print(f"{tag} epoch {epoch + 1}/{epochs}: loss {loss_sum / len(train_set):.4f}, test acc {accuracy:.4f}, "
              f"{cpu:.0f} CPU s", flush=True)
        results[tag] = {"history": history}
        save()
    return history


def localisation(model: nn.Module, test_set: ImageSet, grids: int, method: str, smoke: bool = False) -> dict:
    model.eval()
    built, _ = build_grids(model, test_set.images, test_set.labels, 3, grids, seed=0, require_correct=not smoke)
    scores, seconds = grid_pointing_scores(model, built, method, smooth_kernel=3, batch_size=8, progress=False)
    return {"grids": len(built), **summarize(scores), "seconds_per_grid": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--conventional-epochs", type=int, default=10)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--anneal", type=float, default=0.6, help="fraction of fine-tuning steps spent annealing")
    parser.add_argument("--grids", type=int, default=100)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--smoke", action="store_true", help="admit misclassified images into grids (tiny runs)")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"CIFAR-10 not found at {args.data} (expected ../shared/data/cifar10 next to the repository)")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_set = load_cifar10(args.data, "train", args.train_per_class)
    test_set = load_cifar10(args.data, "test", args.test_per_class)
    results: dict = {"settings": {**vars(args), "threads": torch.get_num_threads(), "clock": "time.process_time",
                                  "train_images": len(train_set), "test_images": len(test_set)}}

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1))

    torch.manual_seed(0)
    conventional = conventional_resnet()
    train_epochs(conventional, train_set, test_set, args.conventional_epochs, 1e-3, 0, "conventional", results, save)
    results["conventional"]["localisation_linear_rows"] = localisation(
        conventional, test_set, args.grids, "linear_rows", args.smoke
    )
    save()

    converted = to_bcos(conventional.eval())
    x_check = test_set.images[:4].float().div(255)
    with torch.no_grad():
        results["conversion_max_abs_difference"] = float((converted(x_check) - conventional(x_check)).abs().max())
    converted.train()

    finished = []

    def anneal(step: int, total: int, optimizer) -> None:
        if finished:
            return
        p = progress_at(step, total, args.anneal)
        set_bcosification(converted, p)
        if p == 1.0:
            finalize_bcos(converted)  # the removed biases simply stop receiving gradients
            finished.append(step)

    train_epochs(converted, train_set, test_set, args.finetune_epochs, 5e-4, 1, "finetuned", results, save,
                 on_step=anneal)
    assert_bcos_final(converted.double().eval(), x_check.double(), atol=1e-8)
    converted.float()
    results["finetuned"]["final_check"] = "assert_bcos_final passed (B = 2, no biases/ReLU/max pool/BN shifts)"
    results["finetuned"]["localisation_bcos"] = localisation(converted, test_set, args.grids, "bcos", args.smoke)
    save()

    torch.manual_seed(2)
    scratch = finalize_bcos(set_bcosification(to_bcos(conventional_resnet()), 1.0))
    epochs = args.conventional_epochs + args.finetune_epochs
    train_epochs(scratch, train_set, test_set, epochs, 1e-3, 2, "scratch", results, save)
    results["scratch"]["localisation_bcos"] = localisation(scratch, test_set, args.grids, "bcos", args.smoke)
    save()
    (out / "table.md").write_text(table(results))
    print(table(results))
    print(json.dumps(summary(results)))


def summary(results: dict) -> dict:
    conv, ft, sc = (results[k]["history"] for k in ("conventional", "finetuned", "scratch"))
    conv_cpu, ft_cpu = conv[-1]["cpu_seconds"], ft[-1]["cpu_seconds"]
    same_time_not_counted = next((h for h in sc if h["cpu_seconds"] >= ft_cpu), sc[-1])
    same_time_counted = next((h for h in sc if h["cpu_seconds"] >= conv_cpu + ft_cpu), sc[-1])
    reach = next((h for h in sc if h["test_accuracy"] >= ft[-1]["test_accuracy"]), None)
    return {
        "conventional_accuracy": conv[-1]["test_accuracy"],
        "finetuned_accuracy": ft[-1]["test_accuracy"],
        "finetune_cpu_seconds": ft_cpu,
        "conventional_cpu_seconds": conv_cpu,
        "scratch_accuracy_at_finetune_time": same_time_not_counted["test_accuracy"],
        "scratch_epochs_at_finetune_time": same_time_not_counted["epoch"],
        "scratch_accuracy_at_total_time": same_time_counted["test_accuracy"],
        "scratch_epochs_at_total_time": same_time_counted["epoch"],
        "scratch_final_accuracy": sc[-1]["test_accuracy"],
        "scratch_cpu_seconds": sc[-1]["cpu_seconds"],
        "scratch_cpu_seconds_to_reach_finetuned_accuracy": None if reach is None else reach["cpu_seconds"],
        "finetuned_grid_pointing_mean": results["finetuned"]["localisation_bcos"]["mean"],
        "scratch_grid_pointing_mean": results["scratch"]["localisation_bcos"]["mean"],
    }


def table(results: dict) -> str:
    s = summary(results)
    ft, sc, conv = results["finetuned"], results["scratch"], results["conventional"]
    conv_cpu, ft_cpu = s["conventional_cpu_seconds"], s["finetune_cpu_seconds"]

    def where(loc: dict, note: str = "") -> str:
        return f"{loc['mean']:.3f} / {loc['median']:.3f}{note}"

    reach = s["scratch_cpu_seconds_to_reach_finetuned_accuracy"]
    rows = [
        ("conventional ResNet (ReLU, BN, max pool, biases)", len(conv["history"]), f"{conv_cpu:.0f}",
         s["conventional_accuracy"], where(conv["localisation_linear_rows"], " (linear-interpreter rows)")),
        ("converted + fine-tuned B-cos (B = 2)", len(ft["history"]),
         f"{ft_cpu:.0f} (+{conv_cpu:.0f} conventional = {ft_cpu + conv_cpu:.0f})", s["finetuned_accuracy"],
         where(ft["localisation_bcos"])),
        ("B-cos from scratch, fine-tuning time (conventional not counted)", s["scratch_epochs_at_finetune_time"],
         f"~{ft_cpu:.0f}", s["scratch_accuracy_at_finetune_time"], ""),
        ("B-cos from scratch, total time (conventional counted)", s["scratch_epochs_at_total_time"],
         f"~{ft_cpu + conv_cpu:.0f}", s["scratch_accuracy_at_total_time"], ""),
        ("B-cos from scratch, all epochs", len(sc["history"]), f"{s['scratch_cpu_seconds']:.0f}",
         s["scratch_final_accuracy"], where(sc["localisation_bcos"])),
    ]
    lines = [
        "| model | epochs | CPU s (1 thread) | test accuracy | grid pointing 3x3 (mean / median) |",
        "|---|---|---|---|---|",
        *(f"| {name} | {epochs} | {cpu} | {acc:.4f} | {loc} |" for name, epochs, cpu, acc, loc in rows),
        "",
        ("From scratch did not reach the fine-tuned accuracy within its epochs" if reach is None
         else f"From scratch reached the fine-tuned accuracy after {reach:.0f} CPU s")
        + f"; fine-tuning took {ft_cpu:.0f} CPU s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

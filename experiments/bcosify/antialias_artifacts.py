"""Grid artifacts of B-cos explanations: strided vs BlurPool vs FLC downsampling (chest X-ray paper, Sec. 3.2).

The same B-cos ResNet-18 (small-input variant, successor design, ``--width``) is trained the same way
with ``antialias=None | "blurpool" | "flc"``; for each: test accuracy, the 3x3 grid pointing game of
the inherent explanation (App. C.2.1 of the B-cos paper) and the mean grid-artifact score
(:func:`linearlens.metrics.artifact_score`) of the predicted class's contribution maps at the network's
total stride.  One variant per process (``--variant``), then ``--report`` writes the table and figure.

    for v in none blurpool flc; do python experiments/bcosify/antialias_artifacts.py --variant $v & done; wait
    python experiments/bcosify/antialias_artifacts.py --report
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from linearlens.data import augment_batch, load_cifar10
from linearlens.explain import explain
from linearlens.metrics import artifact_score
from linearlens.metrics.evaluation import build_grids, grid_pointing_scores, summarize
from linearlens.models import create_model
from linearlens.training import bce_loss, cosine_lr, evaluate_accuracy

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data" / "cifar10"
VARIANTS = {"none": None, "blurpool": "blurpool", "flc": "flc"}


def run_variant(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    train_set = load_cifar10(args.data, "train", args.train_per_class)
    test_set = load_cifar10(args.data, "test", args.test_per_class)
    torch.manual_seed(0)
    model = create_model("bcos_resnet18_cifar", width=args.width, antialias=VARIANTS[args.variant])
    shapes = []
    hook = model.stages.register_forward_hook(lambda module, inputs, output: shapes.append(output.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    hook.remove()
    stride = 32 // shapes[0]  # total downsampling of the feature stages
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    batch, steps = 64, math.ceil(len(train_set) / 64)
    t0 = time.process_time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            x = augment_batch(train_set.images[idx].float().div_(255), generator)
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(epoch * steps + step, steps * args.epochs, 1e-3, 1e-5)
            loss = bce_loss(model(x), train_set.labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(f"{args.variant} epoch {epoch + 1}: loss {float(loss.detach()):.4f}", flush=True)
    train_cpu = time.process_time() - t0
    model.eval()
    accuracy = evaluate_accuracy(model, test_set)
    x = test_set.images[: args.maps].float() / 255
    maps = torch.cat([explain(model, x[i : i + 25], "predicted", method="bcos").attributions[:, 0]
                      for i in range(0, len(x), 25)])
    score_stride = args.stride or stride
    scores = artifact_score(maps, score_stride)
    grids, _ = build_grids(model, test_set.images, test_set.labels, 3, args.grids, seed=0,
                           require_correct=not args.smoke)
    pointing, _ = grid_pointing_scores(model, grids, "bcos", smooth_kernel=3, batch_size=8, progress=False)
    result = {
        "variant": args.variant, "test_accuracy": accuracy, "train_cpu_seconds": train_cpu,
        "artifact_stride": score_stride, "artifact": summarize(scores), "grid_pointing": summarize(pointing),
        "settings": {k: v for k, v in vars(args).items() if k != "report"}, "threads": 1,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"antialias_{args.variant}.json").write_text(json.dumps(result, indent=1))
    torch.save(maps[:8], out / f"antialias_{args.variant}_maps.pt")
    print(json.dumps({k: result[k] for k in ("variant", "test_accuracy", "artifact_stride")}))


def report(args: argparse.Namespace) -> None:
    from linearlens.figures import save_figure, subplots

    out = Path(args.out)
    rows = [json.loads((out / f"antialias_{v}.json").read_text()) for v in VARIANTS]
    lines = ["| downsampling | test accuracy | grid pointing 3x3 (mean) | artifact score (mean +- std over maps) |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['test_accuracy']:.4f} | {r['grid_pointing']['mean']:.3f} | "
                     f"{r['artifact']['mean']:.2f} +- {r['artifact']['std']:.2f} (stride {r['artifact_stride']}) |")
    (out / "antialias_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = subplots(3, 4, figsize=(6, 4.8))
    for j, v in enumerate(VARIANTS):
        maps = torch.load(out / f"antialias_{v}_maps.pt")
        for i in range(4):
            m = maps[i].numpy()
            axes[j, i].imshow(m, cmap="bwr", vmin=-abs(m).max(), vmax=abs(m).max())
            axes[j, i].set_axis_off()
        axes[j, 0].set_title(f"{v}: artifact {rows[j]['artifact']['mean']:.2f}", fontsize=8, loc="left")
    save_figure(fig, out / "antialias_maps.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--maps", type=int, default=200, help="test images whose predicted-class map is scored")
    parser.add_argument("--stride", type=int, default=None, help="artifact grid stride (default: the network's)")
    parser.add_argument("--grids", type=int, default=30)
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--smoke", action="store_true", help="admit misclassified images into grids (tiny runs)")
    args = parser.parse_args()
    if args.report:
        report(args)
        return
    if args.variant is None:
        parser.error("pass --variant or --report")
    if not Path(args.data).is_dir():
        sys.exit(f"CIFAR-10 not found at {args.data} (expected ../shared/data/cifar10 next to the repository)")
    run_variant(args)


if __name__ == "__main__":
    main()

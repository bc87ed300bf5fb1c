"""Case 1 of the linear-interpreter paper on CIFAR-10: residual share, layer-wise biases, pixel votes.

Trains a small VGG-style ReLU classifier (5 conv blocks, 3 max-pools, 2 fully connected layers) for a
few CPU minutes on ../shared/data/cifar10, once with batch norm and once without (Fig. 8 of the paper
compares the two), then, on 100 test images (10 per class), with :mod:`linearlens.interpret`:

* the residual share ``r(x0) / f(x0)`` of the top-1 score (Table 3),
* the layer-wise contributions of the masked biases to the top-1 score, normalised by the score
  and averaged over the images (Theorem 1; Fig. 4),
* pixel discussions (Eq. (18)) and pixel votes for a few test images (Fig. 3).

The network's first module normalises the image (mean/std); it is an ``InputEncoding``, so, as in the
paper's torchvision models, the interpreter's input ``x0`` is the normalised image.

    python experiments/linearscope/cifar_demo.py               # train both nets (~6 CPU minutes) + figures
    python experiments/linearscope/cifar_demo.py --epochs 0    # reuse runs/linearscope/cifar_*.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FIGURES, RUNS, SHARED_DATA, command_line, load_weights, save_weights  # noqa: E402

from linearlens.data import augment_batch, load_cifar10  # noqa: E402
from linearlens.engine import InputEncoding  # noqa: E402
from linearlens.figures import subplots  # noqa: E402
from linearlens.interpret import LinearScope, bias_contributions, pixel_discussions, pixel_votes  # noqa: E402
from linearlens.interpret.plots import contribution_bars, pixel_vote_grid  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class Normalize(InputEncoding):
    """``(x - mean) / std``; its output is the interpreted input, as for torchvision models in the paper."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _block(c_in: int, c_out: int, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class SmallVGG(nn.Module):
    """conv1 pool conv2 pool conv3 conv4 pool fc1 fc2: a VGG in miniature (VGG-BN when ``bn``)."""

    def __init__(self, bn: bool = True, widths: tuple[int, int, int] = (16, 32, 64), classes: int = 10) -> None:
        super().__init__()
        a, b, c = widths
        self.normalize = Normalize()
        self.conv1 = _block(3, a, bn)
        self.conv2 = _block(a, b, bn)
        self.conv3 = _block(b, c, bn)
        self.conv4 = _block(c, c, bn)
        self.fc1 = nn.Sequential(nn.Linear(c * 4 * 4, 128), nn.ReLU(inplace=True))
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(self.conv1(self.normalize(x)), 2)
        h = F.max_pool2d(self.conv2(h), 2)
        h = F.max_pool2d(self.conv4(self.conv3(h)), 2)
        return self.fc2(self.fc1(h.flatten(1)))


def layer_of(name: str) -> str:
    """Group leaf modules by block: conv + batch norm + ReLU of one block form one layer."""
    return name.split(".")[0]


def load(split: str):
    root = SHARED_DATA / "cifar10"
    if root.exists():
        return load_cifar10(root, split), str(root)
    print(f"warning: {root} not found; using the embedded CIFAR-10 subset (numbers will differ from the docs)",
          file=sys.stderr)
    return load_cifar10("embedded", split), "embedded"


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=5e-4)
    steps = epochs * (len(images) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1))
    start, step = time.time(), 0
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=gen)
        correct = 0
        for i in range(len(images) // 128):
            idx = order[i * 128 : (i + 1) * 128]
            x = augment_batch(images[idx].float() / 255, gen)
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == labels[idx]).sum())
            step += 1
        print(f"  epoch {epoch + 1}/{epochs}: train acc {correct / (len(images) // 128 * 128):.3f} "
              f"({time.time() - start:.0f}s)", flush=True)
    model.eval()
    return {"epochs": epochs, "steps": step, "train_seconds": round(time.time() - start, 1)}


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    for i in range(0, len(images), 500):
        correct += int((model(images[i : i + 500].float() / 255).argmax(1) == labels[i : i + 500]).sum())
    return correct / len(images)


def pick_examples(images: torch.Tensor, labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the first ``per_class`` test images of every class."""
    return torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per network (0: load checkpoints)")
    parser.add_argument("--variants", default="bn,plain", help="comma list of bn (with batch norm) and plain")
    parser.add_argument("--images", type=int, default=10, help="test images per class for the statistics")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    FIGURES.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    test, source = load("test")
    train_set = load("train")[0] if args.epochs > 0 else None
    classes = test.classes
    idx = pick_examples(test.images, test.labels, args.images)
    x = test.images[idx].float() / 255
    numbers: dict = {"data": source, "interpreted_images": len(idx), "nets": {}}
    tables = {}

    for variant in args.variants.split(","):
        torch.manual_seed(args.seed)
        model = SmallVGG(bn=variant == "bn")
        ckpt = RUNS / f"cifar_{variant}.safetensors"
        if args.epochs > 0:
            print(f"training {variant} ...", flush=True)
            info = train(model, train_set.images, train_set.labels, args.epochs, args.seed)
            save_weights(ckpt, model, info)
        else:
            info = load_weights(ckpt, model)
        model.eval()
        acc = accuracy(model, test.images, test.labels)
        print(f"{variant}: test accuracy {acc:.4f} on {len(test)} images", flush=True)

        t = time.time()
        scope = LinearScope(model, x)
        top = scope.output.argmax(1, keepdim=True)
        score = scope.output.gather(1, top).squeeze(1)
        share = (scope.residual.gather(1, top).squeeze(1) / score)
        decomposition = bias_contributions(model, x, groups=layer_of, chunk_size=4)
        table, columns, _ = decomposition.table()  # (N, 1, 2 + G), normalised by the top-1 score
        tables[variant] = (table[:, 0], columns)
        check = float((decomposition.total() - decomposition.output).abs().max())
        numbers["nets"][variant] = {
            "train": info, "test_accuracy": acc,
            "residual_share_top1": {"mean": float(share.mean()), "std": float(share.std()),
                                    "median": float(share.median())},
            "contributions_top1_mean": dict(zip(columns, table[:, 0].mean(0).tolist())),
            "contributions_top1_std": dict(zip(columns, table[:, 0].std(0).tolist())),
            "decomposition_max_abs_error": check,
            "interpretation_seconds": round(time.time() - t, 1),
        }
        print(f"{variant}: residual share of the top-1 score {float(share.mean()):.1%} ± {float(share.std()):.1%}; "
              f"decomposition error {check:.2e}", flush=True)
        numbers["nets"][variant]["pixel_votes_100"] = vote_statistics(model, x, top)
        if variant == "bn" or len(args.variants.split(",")) == 1:
            numbers["pixel_votes"] = discussions_figure(model, test, classes)

    # Fig. 4: layer-wise contributions to the top-1 score, normalised by the score.
    fig, axes = subplots(1, len(tables), figsize=(5.5 * len(tables), 3.6), squeeze=False)
    for ax, (variant, (tab, columns)) in zip(axes[0], tables.items()):
        net = numbers["nets"][variant]
        share = net["residual_share_top1"]
        contribution_bars(ax, tab, columns, f"{'with' if variant == 'bn' else 'without'} batch norm (test acc "
                          f"{net['test_accuracy']:.1%})\nresidual share {share['mean']:.0%} ± {share['std']:.0%}")
    fig.suptitle(f"layer-wise contributions to top-1 scores, mean ± std over {len(idx)} CIFAR-10 test images\n"
                 f"{command_line()}", fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "cifar_bias_contributions.png", dpi=130)

    numbers["command"] = command_line()
    (FIGURES / "cifar_numbers.json").write_text(json.dumps(numbers, indent=2))
    print(json.dumps(numbers))
    return 0


def vote_statistics(model: nn.Module, x: torch.Tensor, top: torch.Tensor) -> dict:
    """How often pixels vote for the top-1 class (Fig. 3's claim), for both normalisations of Eq. (18)."""
    stats = {}
    for normalization in ("layer", "score"):
        votes = pixel_votes(pixel_discussions(model, x, "all", normalization=normalization))
        counts = torch.stack([torch.bincount(v.flatten(), minlength=10) for v in votes]).float()
        share = counts.gather(1, top).squeeze(1) / counts.sum(1)
        stats[normalization] = {
            "top1_vote_share_mean": float(share.mean()),
            "top1_wins_plurality": float((counts.argmax(1) == top.squeeze(1)).float().mean()),
        }
    print(f"  pixel votes for the top-1 class: {stats}", flush=True)
    return stats


def discussions_figure(model: nn.Module, test, classes: list[str], count: int = 4) -> list[dict]:
    """Fig. 3: pixel discussions of the top-2 scores and the pixels' votes, for confidently right images."""
    picked = []
    with torch.no_grad():
        for c in (0, 3, 7, 9, 1, 5):  # airplane, cat, horse, truck, automobile, dog
            for i in torch.nonzero(test.labels == c).flatten()[:50].tolist():
                p = model(test.images[i : i + 1].float() / 255).softmax(1)[0]
                if int(p.argmax()) == c and float(p.max()) > 0.6:
                    picked.append(i)
                    break
            if len(picked) == count:
                break
    x = test.images[picked].float() / 255
    pd = pixel_discussions(model, x, "all")
    labels = [f"label: {classes[int(test.labels[i])]}" for i in picked]
    drawn = pixel_vote_grid(x, pd, classes, FIGURES / "cifar_pixel_votes.png", labels=labels, title=(
        f"pixel discussions (Eq. 18; red +, blue -) and pixel votes over all 10 classes\n{command_line()}"))
    return [{"test_index": i, "label": classes[int(test.labels[i])], **e} for i, e in zip(picked, drawn["images"])]

if __name__ == "__main__":
    sys.exit(main())

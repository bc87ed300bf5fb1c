"""Train the conventional CNNs (and the B-cos network of matched accuracy) for the PatternNet experiments.

Reads ``../shared/data/cifar10`` (JPEG copy of CIFAR-10: 30,000 training, 10,000 test images); exits
with a clear message when it is absent.  Single-threaded CPU training, a few minutes per network.
Weights go to ``runs/patterns/<name>/`` (safetensors + JSON, ignored by git).

    python experiments/patterns/train.py --arch vgg --epochs 8
    python experiments/patterns/train.py --arch resnet --epochs 2 --limit-per-class 1000
    python experiments/patterns/train.py --arch bcos --epochs 3 --limit-per-class 1000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from linearlens.data import load_cifar10
from linearlens.data.cifar10 import augment_batch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "patterns"
sys.path.insert(0, str(HERE))
from models import ARCHITECTURES  # noqa: E402


def require_data() -> Path:
    if not DATA.is_dir():
        sys.exit(f"error: the CIFAR-10 copy {DATA} (../shared/data/cifar10) is absent; these experiments need it")
    return DATA


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    hits = sum(int((model(images[i:i + 500].float() / 255).argmax(1) == labels[i:i + 500]).sum())
               for i in range(0, len(images), 500))
    return hits / len(images)


def train_relu(arch: str, epochs: int, lr: float, batch: int, seed: int, limit: int | None) -> dict:
    train_set, test_set = load_cifar10(str(require_data()), "train", limit), load_cifar10(str(DATA), "test")
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch]()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4 if arch == "resnet" else 0.0)
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(train_set) / batch)
    history = []
    for epoch in range(epochs):
        model.train()
        t0, order = time.process_time(), torch.randperm(len(train_set), generator=gen)
        for step in range(steps):
            progress = (epoch * steps + step) / (epochs * steps)
            for g in opt.param_groups:  # cosine schedule to lr / 100
                g["lr"] = lr / 100 + 0.5 * (lr - lr / 100) * (1 + math.cos(math.pi * progress))
            idx = order[step * batch:(step + 1) * batch]
            x = augment_batch(train_set.images[idx].float() / 255, gen)
            loss = F.cross_entropy(model(x), train_set.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = accuracy(model, test_set.images, test_set.labels)
        history.append({"epoch": epoch + 1, "test_accuracy": acc, "cpu_seconds": time.process_time() - t0})
        print(json.dumps({"arch": arch, **history[-1]}), flush=True)
    out = RUNS / arch
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    info = {"arch": arch, "epochs": epochs, "lr": lr, "batch": batch, "seed": seed, "train_images": len(train_set),
            "history": history,
            "test_accuracy": history[-1]["test_accuracy"]}
    (out / "info.json").write_text(json.dumps(info, indent=1))
    return info


def train_bcos(epochs: int, width: float, limit: int | None) -> dict:
    from linearlens.training import TrainConfig, train

    config = TrainConfig(out_dir=str(RUNS / "bcos"), model="bcos_cifar",
                         model_args={"b": 2.0, "max_out": 2, "width": width},
                         data=str(require_data()), train_limit_per_class=limit, epochs=epochs, threads=1)
    return train(config, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=[*ARCHITECTURES, "bcos"], required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bcos-width", type=float, default=0.125)
    p.add_argument("--limit-per-class", type=int, default=None, help="training images per class (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.arch == "bcos":
        info = train_bcos(args.epochs, args.bcos_width, args.limit_per_class)
    else:
        info = train_relu(args.arch, args.epochs, args.lr, args.batch, args.seed, args.limit_per_class)
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, default=str))


if __name__ == "__main__":
    main()

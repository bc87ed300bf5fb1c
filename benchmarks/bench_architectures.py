"""Cost of the B-cos architecture families against their torchvision counterparts (issue 8).

For every family (VGG-11, ResNet-18/34/50, DenseNet-121, Inception-v3, ViT-C Tiny/Small), at one small
input size (``--size``, 64 px; Inception at ``max(size, 80)`` because torchvision's Inception-v3 needs
at least 75 px), a batch of ``--batch`` random images, full width, 1000 classes, times in one
interleaved run (median of ``--repeats``):

* ``forward``: ``model(x)`` under ``torch.no_grad()``, B-cos and torchvision;
* ``forward_backward``: ``model(x).sum().backward()`` (training step without the optimiser);
* ``explain_all``: ``explain(model, x, "all")`` on the same B-cos architecture with a 10-class head
  (every class of every image: one frozen forward plus 10 input-gradient passes), relative to one
  ``no_grad`` forward pass of that 10-class model.

The torchvision counterparts are ``vgg11``, ``resnet18/34/50``, ``densenet121``, ``inception_v3``
(``aux_logits=False``, ``init_weights=False``) and a ``VisionTransformer`` with ViT-Ti / ViT-S sizes
(12 layers, 3 / 6 heads, 192 / 384 wide) and patch 16, which gives the same token grid at the same
input size as the B-cos ViT-C's four stride-2 stem convolutions.  Models are untrained: the cost does
not depend on the weights' values.  Clock: process CPU time (``time.process_time``), one thread.

Usage: ``python benchmarks/bench_architectures.py [--size 64] [--batch 8] [--repeats 3] [--design v2]
[--families resnet18,vit_tiny]``.  The last line of output is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from bench_bcos_layer import keep_freed_memory  # same folder: run as a script
from linearlens.explain import explain
from linearlens.models import create_model


def _tv_vit(heads: int, dim: int) -> Callable[[int], nn.Module]:
    def build(size: int) -> nn.Module:
        return torchvision.models.vision_transformer.VisionTransformer(
            image_size=size, patch_size=16, num_layers=12, num_heads=heads, hidden_dim=dim, mlp_dim=4 * dim
        )

    return build


FAMILIES: dict[str, tuple[str, Callable[[int], nn.Module]]] = {
    "vgg11": ("bcos_vgg11", lambda s: torchvision.models.vgg11()),
    "resnet18": ("bcos_resnet18", lambda s: torchvision.models.resnet18()),
    "resnet34": ("bcos_resnet34", lambda s: torchvision.models.resnet34()),
    "resnet50": ("bcos_resnet50", lambda s: torchvision.models.resnet50()),
    "densenet121": ("bcos_densenet121", lambda s: torchvision.models.densenet121()),
    "inception_v3": ("bcos_inception_v3",
                     lambda s: torchvision.models.inception_v3(aux_logits=False, init_weights=False)),
    "vit_tiny": ("bcos_vit_tiny", _tv_vit(3, 192)),
    "vit_small": ("bcos_vit_small", _tv_vit(6, 384)),
}


def cpu_time(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def forward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return model(x)

    return run


def forward_backward(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    return run


def bench_family(key: str, args: argparse.Namespace) -> dict:
    bcos_name, tv_build = FAMILIES[key]
    size = max(args.size, 80) if key == "inception_v3" else args.size
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, size, size)
    extra = {"aux_logits": False} if key == "inception_v3" else {}
    bcos = create_model(bcos_name, design=args.design, **extra).train()
    tv = tv_build(size).train()
    bcos10 = create_model(bcos_name, design=args.design, num_classes=10, **extra).eval()
    # v2 batch norm in training mode uses batch statistics, like torchvision's BatchNorm2d; eval for inference
    cases = {
        "bcos_forward": lambda: forward(bcos.eval(), x)(),
        "tv_forward": lambda: forward(tv.eval(), x)(),
        "bcos_forward_backward": lambda: forward_backward(bcos.train(), x)(),
        "tv_forward_backward": lambda: forward_backward(tv.train(), x)(),
        "bcos10_forward": forward(bcos10, x),
        "bcos10_explain_all": lambda: explain(bcos10, x, "all"),
    }
    for fn in cases.values():  # warm-up: first-touch allocations, lazy initialisation
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(cpu_time(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "input_size": size,
        "seconds": {k: round(v, 4) for k, v in med.items()},
        "forward_ratio": round(med["bcos_forward"] / med["tv_forward"], 2),
        "forward_backward_ratio": round(med["bcos_forward_backward"] / med["tv_forward_backward"], 2),
        "explain_all_over_forward": round(med["bcos10_explain_all"] / med["bcos10_forward"], 2),
        "bcos_params_m": round(sum(p.numel() for p in bcos.parameters()) / 1e6, 2),
        "tv_params_m": round(sum(p.numel() for p in tv.parameters()) / 1e6, 2),
    }
    print(f"{key:13s} {size:4d}px  forward x{row['forward_ratio']:<6} fwd+bwd x{row['forward_backward_ratio']:<6} "
          f"explain(all 10) / forward x{row['explain_all_over_forward']:<6} "
          f"(B-cos fwd {med['bcos_forward']:.3f} s, torchvision {med['tv_forward']:.3f} s)", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--design", choices=("paper", "v2"), default="v2")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"unknown families {unknown}; known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    if args.size < 32 or args.batch < 1 or args.repeats < 1:
        print("--size must be >= 32, --batch and --repeats >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    rows = {key: bench_family(key, args) for key in families}
    print(json.dumps({
        "benchmark": "architectures", "design": args.design, "batch": args.batch, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "clock": "process_time", "keep_freed_memory": kept,
        "torch": torch.__version__, "machine": platform.machine(), "families": rows,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

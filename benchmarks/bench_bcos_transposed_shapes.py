"""Where a B-cos layer should convolve a plain (NCHW) input channels-last: layer shapes, with and without.

For each layer shape, times a training step of one ``BcosConv2d`` (forward and backward to the input and the
weight) on a plain float32 batch with the transposing path of ``_bcos_transposed`` forced on (whatever its
rule says) and switched off, interleaved round by round, and reports the ratio of medians (below 1: the
transposing path is faster).
``--inference`` also times the ``no_grad`` forward with the transposing kernels run by hand (the layer itself
never uses them there).  1 thread, process CPU clock, freed memory kept.  These ratios chose
``_bcos_transposed.applies``'s rule (a kernel larger than 1x1, at least 256 output positions).

``--network`` instead times a training step (forward, BCE loss, backward; batch 64) of the CIFAR network
``bcos_cifar`` at widths 0.25 and 0.5, plain and MaxOut, with the path on (by its rule) and off.

Usage: ``python benchmarks/bench_bcos_transposed_shapes.py [--repeats 10] [--inference] [--max-out 2]
[--network]``.  Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bcos_layer import keep_freed_memory, positive_int, transposing_kernels_missing  # noqa: E402
from linearlens.layers import BcosConv2d  # noqa: E402
from linearlens.layers import _bcos_transposed as transposed  # noqa: E402
from linearlens.models import create_model  # noqa: E402
from linearlens.training import bce_loss  # noqa: E402

# (in, out, map size, stride, kernel, batch): the CIFAR network's layers and ImageNet-sized ones
SHAPES = [
    (6, 32, 32, 1, 3, 64), (32, 32, 32, 1, 3, 64), (64, 64, 32, 1, 3, 64), (32, 64, 32, 2, 3, 64),
    (64, 64, 16, 1, 3, 64), (128, 128, 16, 1, 3, 64), (100, 37, 20, 1, 3, 16), (64, 64, 56, 1, 3, 8),
    (128, 128, 28, 1, 3, 8), (256, 256, 28, 1, 3, 8), (256, 256, 16, 1, 3, 8), (32, 32, 64, 1, 5, 4),
    (6, 64, 224, 2, 7, 4), (256, 64, 56, 1, 1, 8), (512, 128, 28, 1, 1, 8),
]


MANY = 1 << 30


def _transposed_inference(layer: BcosConv2d, x: torch.Tensor) -> torch.Tensor:
    xt, squares = transposed.squares_to_nhwc(x, 1)
    linear = F.conv2d(xt, layer.normalized_weight(), None, layer.stride, layer.padding)
    del xt
    return transposed.scale_forward_to_nchw(linear, layer._norm_maps(squares)[2], 1, layer.b, layer.scale)[0]


def network_rows(repeats: int) -> list[dict]:
    """The CIFAR network's training step with the channels-last path allowed by its rule and switched off."""
    allowed, rows = transposed.applies, []
    for width in (0.25, 0.5):
        for max_out in (1, 2):
            torch.manual_seed(0)
            net = create_model("bcos_cifar", width=width, max_out=max_out)
            x, labels = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
            times: dict[str, list[float]] = {"on": [], "off": []}
            for _ in range(repeats + 1):
                for name in times:
                    transposed.applies = allowed if name == "on" else (lambda *a, **k: False)
                    net.zero_grad(set_to_none=True)
                    t0 = time.process_time()
                    bce_loss(net(x), labels).backward()
                    times[name].append(time.process_time() - t0)
                    transposed.applies = allowed
            med = {name: statistics.median(values[1:]) for name, values in times.items()}
            row = {"width": width, "max_out": max_out, "step_off_ms": round(1e3 * med["off"], 1),
                   "step_on_ms": round(1e3 * med["on"], 1), "on_over_off": round(med["on"] / med["off"], 3)}
            print(row, flush=True)
            rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--inference", action="store_true")
    parser.add_argument("--max-out", type=int, default=1, choices=(1, 2), help="MaxOut units per channel")
    parser.add_argument("--network", action="store_true", help="the CIFAR network's training step instead")
    args = parser.parse_args()
    if transposing_kernels_missing():
        return 1
    torch.set_num_threads(1)
    kept = keep_freed_memory()
    if args.network:
        rows = network_rows(args.repeats)
        print(json.dumps({"benchmark": "bcos_transposed_network", "threads": 1, "clock": "cpu", "batch": 64,
                          "repeats": args.repeats, "kept_freed_memory": kept,
                          "load_avg_1min": round(os.getloadavg()[0], 2), "rows": rows}))
        return 0
    allowed = transposed.applies

    def forced(x, *_):  # the transposing path whatever the shape, to measure what the rule decides on
        return allowed(x, MANY, (3, 3), args.max_out, 1)

    rows = []
    for cin, cout, size, stride, kernel, batch in SHAPES:
        torch.manual_seed(0)
        layer = BcosConv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, max_out=args.max_out)
        x = torch.randn(batch, cin, size, size)
        with torch.no_grad():
            grad = torch.randn_like(layer(x))
        times: dict[str, list[float]] = {"train_transposed": [], "train_plain": []}
        if args.inference and args.max_out == 1:
            times.update(infer_transposed=[], infer_plain=[])
        for _ in range(args.repeats + 1):
            for name in times:
                transposed.applies = forced if name == "train_transposed" else (lambda *a, **k: False)
                inputs = x.clone().requires_grad_(name.startswith("train"))
                t0 = time.process_time()
                if name.startswith("train"):
                    layer(inputs).backward(grad)
                else:
                    with torch.no_grad():
                        (_transposed_inference if name == "infer_transposed" else layer)(*(
                            (layer, inputs) if name == "infer_transposed" else (inputs,)))
                times[name].append(time.process_time() - t0)
                transposed.applies = allowed
        med = {name: statistics.median(values[1:]) for name, values in times.items()}
        row = {"in": cin, "out": cout, "size": size, "stride": stride, "kernel": kernel, "batch": batch,
               "train_plain_ms": round(1e3 * med["train_plain"], 2),
               "train_transposed_over_plain": round(med["train_transposed"] / med["train_plain"], 3),
               "rule_applies": allowed(x, ((size - 1) // stride + 1) ** 2, (kernel, kernel), args.max_out, 1)}
        if "infer_plain" in times:
            row["infer_transposed_over_plain"] = round(med["infer_transposed"] / med["infer_plain"], 3)
        print(row, flush=True)
        rows.append(row)
    print(json.dumps({"benchmark": "bcos_transposed_shapes", "max_out": args.max_out, "threads": 1, "clock": "cpu",
                      "repeats": args.repeats, "kept_freed_memory": kept,
                      "load_avg_1min": round(os.getloadavg()[0], 2), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

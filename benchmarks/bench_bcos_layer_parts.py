"""Where the B-cos convolution's forward time goes beyond ``nn.Conv2d``, and whether chunking the batch helps.

Times, interleaved round by round (1 thread, process CPU clock, ``no_grad``, freed memory kept), for 64 -> 64
channels, 3x3, batch 32, 32x32:

* ``conv+patch_norms``: the convolution plus the fused patch norms (one read of ``x``),
* ``conv+epilogue``: the convolution plus the fused scale epilogue in place (one read and write of its output),
* ``bcos``: the whole ``BcosConv2d`` forward,
* ``bcos_chunks_K``: the layer run on chunks of K images, each chunk's epilogue reading the convolution's output
  while it is still in cache, and ``conv_chunks_8``: the bare convolution on chunks of 8 (what chunking costs
  oneDNN),

each as a ratio to ``nn.Conv2d`` on the whole batch (median, ratio of minima).  Last line: JSON.
Usage: ``python benchmarks/bench_bcos_layer_parts.py [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from linearlens.layers import BcosConv2d
from linearlens.layers import _bcos_fused as fused

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_bcos_layer import keep_freed_memory  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not fused.available():
        print(f"fused kernels unavailable: {fused.unavailable_reason()}")
        return 2
    keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(32, 64, 32, 32)
    layer = BcosConv2d(64, 64, 3, padding=1)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    w = layer.normalized_weight().detach()
    multiplier = layer._multiplier(layer.patch_norm(x))

    def patch_norms() -> None:
        F.conv2d(x, w, None, 1, 1)
        layer._multiplier(layer.patch_norm(x))

    def epilogue() -> None:
        o = F.conv2d(x, w, None, 1, 1)
        fused.scale_forward(o, multiplier, 1, 1, 2.0, 1.0, o)

    def chunked(k: int):
        def run() -> torch.Tensor:
            out = x.new_empty(32, 64, 32, 32)
            for s in range(0, 32, k):
                xs = x[s : s + k]
                m = layer._multiplier(layer.patch_norm(xs))
                fused.scale_forward(F.conv2d(xs, w, None, 1, 1), m, 1, 1, 2.0, 1.0, out[s : s + k])
            return out
        return run

    with torch.no_grad():
        torch.testing.assert_close(chunked(8)(), layer(x), rtol=1e-5, atol=1e-6)  # same layer, chunked
        cases = {"nn.Conv2d": lambda: conv(x), "conv+patch_norms": patch_norms, "conv+epilogue": epilogue,
                 "bcos": lambda: layer(x), "bcos_chunks_8": chunked(8), "bcos_chunks_16": chunked(16),
                 "conv_chunks_8": lambda: [conv(x[s : s + 8]) for s in range(0, 32, 8)]}
        names = list(cases)
        for _ in range(3):
            for name in names:
                cases[name]()
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.process_time()
                cases[name]()
                times[name].append(time.process_time() - start)
    med = {n: statistics.median(v) for n, v in times.items()}
    low = {n: min(v) for n, v in times.items()}
    result = {n: {"ms": round(1e3 * med[n], 3), "ratio": round(med[n] / med["nn.Conv2d"], 3),
                  "ratio_of_min": round(low[n] / low["nn.Conv2d"], 3)} for n in names}
    for n, r in result.items():
        print(f"{n:18s} {r['ms']:8.2f} ms  {r['ratio']:.3f} ({r['ratio_of_min']:.3f})")
    print(json.dumps({"benchmark": "bcos_layer_parts", "threads": 1, "clock": "cpu", "repeats": args.repeats,
                      "load_avg_1min": os.getloadavg()[0], "cases": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

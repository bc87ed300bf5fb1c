"""The fused B-cos kernels on their own: milliseconds per call against one copy of the convolution's output.

For a B-cos layer's elementwise work on a batch of 64 at 32x32 with 64 output channels (the CIFAR network's
first stage at width 1, or its width-0.5 MaxOut layers' 2 x 32 units), times, per storage dtype (float32,
bfloat16), layout (NCHW, NHWC) and MaxOut units (1, 2):

* ``squares``: ``channel_squares`` of the convolution's output-sized tensor (the next layer's patch norms);
* ``forward``: ``scale_forward`` keeping what the backward needs (MaxOut winner, winning output, mask);
* ``backward``: ``scale_backward``;
* ``copy``: ``torch.Tensor.copy_`` of the convolution's output into a preallocated buffer, the cost of one
  read and one write of it, as a yardstick;

and, in float32, the transposing kernels a training step on a plain (NCHW) input uses (``_bcos_transposed``;
layout ``nchw<->nhwc``): ``squares`` = ``squares_to_nhwc`` (also writes the channels-last copy), ``forward`` =
``scale_forward_to_nchw``, ``backward`` = ``scale_backward_from_nchw``, ``correct`` = ``correct_to_nchw`` (the
untransposed layer does this step as an in-place ``addcmul_``).

1 thread on the process CPU clock by default (``--threads 2 --clock wall`` shows the batch split over
threads), freed memory kept (``mallopt``, see ``bench_bcos_layer.keep_freed_memory``), median of
``--repeats`` interleaved rounds.  Last line: JSON.

Usage: ``python benchmarks/bench_bcos_kernels.py [--repeats 15] [--threads 1] [--clock cpu]``.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bcos_layer import keep_freed_memory, positive_int  # noqa: E402  (same folder, run as a script)
from linearlens.layers import _bcos_fused as fused  # noqa: E402

try:  # an older checkout has no transposing kernels
    from linearlens.layers import _bcos_transposed as transposed  # noqa: E402
except ImportError:
    transposed = None

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _cases(batch: int, channels: int, size: int):
    # (an older checkout of linearlens, timed for a before/after comparison, may lack the bfloat16 kernels)
    supported = getattr(fused, "_SUFFIX", {})
    for dtype_name, dtype in DTYPES.items():
        if dtype not in supported:
            continue
        for layout in ("nchw", "nhwc"):
            for units in (1, 2):
                gen = torch.Generator().manual_seed(units)
                fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
                lin = torch.randn(batch, channels * units, size, size, generator=gen).to(dtype)
                lin = lin.contiguous(memory_format=fmt)
                mult = torch.rand(batch, 1, size, size, generator=gen) + 0.1
                grad = torch.randn(batch, channels, size, size, generator=gen).to(dtype).contiguous(memory_format=fmt)
                _, best, win = fused.scale_forward(lin, mult, units, 1, 2.0, 1.0, keep=True)
                kept = lin if units == 1 else best
                buffer = torch.empty_like(lin)
                calls = {
                    "copy": lambda b=buffer, s=lin: b.copy_(s),
                    "squares": lambda s=lin: fused.channel_squares(s, 1),
                    "forward": lambda s=lin, m=mult, u=units: fused.scale_forward(s, m, u, 1, 2.0, 1.0, keep=True),
                    "backward": lambda g=grad, o=kept, w=win, m=mult, u=units: fused.scale_backward(
                        g, o, w, m, u, 1, 2.0, 1.0),
                }
                yield {"dtype": dtype_name, "layout": layout, "units": units}, calls
    if transposed is not None and transposed.available():
        yield {"dtype": "float32", "layout": "nchw<->nhwc", "units": 1}, _transposing_calls(batch, channels, size)


def _transposing_calls(batch: int, channels: int, size: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, channels, size, size, generator=gen)
    lin = torch.randn(batch, channels, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    mult = torch.rand(batch, 1, size, size, generator=gen) + 0.1
    spread = torch.randn(batch, 1, size, size, generator=gen)
    buffer = torch.empty_like(x)
    return {
        "copy": lambda: buffer.copy_(x),
        "squares": lambda: transposed.squares_to_nhwc(x, 1),
        "forward": lambda: transposed.scale_forward_to_nchw(lin, mult, 1, 2.0, 1.0),
        "backward": lambda: transposed.scale_backward_from_nchw(x, lin, mult, 1, 2.0, 1.0),
        "correct": lambda: transposed.correct_to_nchw(lin, lin, spread),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=15)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    if not fused.available():
        print(json.dumps({"error": f"fused kernels unavailable: {fused.unavailable_reason()}"}))
        return 1
    torch.set_num_threads(args.threads)
    kept_memory = keep_freed_memory()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    cases = list(_cases(args.batch, args.channels, args.size))
    times: list[dict[str, list[float]]] = [{name: [] for name in calls} for _, calls in cases]
    for round_ in range(args.repeats + 2):
        for (_, calls), record in zip(cases, times):
            for name, call in calls.items():
                t0 = clock()
                call()
                if round_ >= 2:  # two warm-up rounds
                    record[name].append(clock() - t0)
    rows = []
    for (key, _), record in zip(cases, times):
        ms = {name: round(1e3 * statistics.median(values), 3) for name, values in record.items()}
        row = {**key, **{f"{name}_ms": value for name, value in ms.items()}}
        for name in ("squares", "forward", "backward"):
            row[f"{name}_over_copy"] = round(ms[name] / ms["copy"], 2)
        print(row, flush=True)
        rows.append(row)
    print(json.dumps({
        "threads": torch.get_num_threads(), "clock": args.clock, "repeats": args.repeats,
        "kept_freed_memory": kept_memory,
        "shape": [args.batch, args.channels, args.size, args.size], "load_avg_1min": round(os.getloadavg()[0], 2),
        "rows": rows,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

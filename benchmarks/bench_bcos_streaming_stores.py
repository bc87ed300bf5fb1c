"""Streaming (non-temporal) stores in the transposing kernels: the B-cos layer's training step with and without.

The transposing kernels of ``_bcos_transposed`` (used when a B-cos layer trains on a plain, NCHW, float32
input) write their full-size outputs with streaming stores where a tile row is whole and aligned.  This
script builds the same kernel source with ordinary (masked) stores only, and times, interleaved round by
round, the forward + backward of a 64 -> 64 3x3 B-cos convolution (batch 32, 32 x 32) with each build
against ``nn.Conv2d``'s.  1 thread, process CPU clock, freed memory kept, median of ``--repeats`` rounds.

Usage: ``python benchmarks/bench_bcos_streaming_stores.py [--repeats 30]``.  Last line: JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bcos_layer import keep_freed_memory, positive_int, transposing_kernels_missing  # noqa: E402
from linearlens.layers import BcosConv2d  # noqa: E402
from linearlens.layers import _bcos_fused as fused  # noqa: E402

STREAMING = "if (m == (__mmask16)0xFFFF && aligned64(dst)) _mm512_stream_ps(dst, v);\n    else "


def ordinary_store_build(folder: str) -> ctypes.CDLL:
    """The fused kernels compiled with every transposing store an ordinary masked store."""
    if STREAMING not in fused._SOURCE:
        raise SystemExit("the kernel source has no streaming store to replace")
    source = Path(folder) / "ordinary_stores.c"
    source.write_text(fused._SOURCE.replace(STREAMING, ""))
    target = Path(folder) / "ordinary_stores.so"
    compiler = os.environ.get("CC") or "cc"
    flags = fused._STATE.get("flags", fused._FLAGS)  # as the library in use was built (OpenMP or not)
    subprocess.run([compiler, *flags, str(source), "-o", str(target), "-lm"], check=True)
    lib, reference = ctypes.CDLL(str(target)), fused._load()
    for name in ("channel_squares", "channel_squares_nhwc", "scale_forward", "scale_forward_nhwc", "scale_backward",
                 "scale_backward_nhwc", "patch_norms", "squares_to_nhwc", "scale_forward_to_nchw",
                 "scale_backward_from_nchw", "correct_to_nchw"):
        getattr(lib, f"{name}_f32").argtypes = getattr(reference, f"{name}_f32").argtypes
    lib.transposed_available.restype = ctypes.c_int
    lib.set_parallel_min.argtypes = [ctypes.c_int64]
    return lib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=30)
    args = parser.parse_args()
    if transposing_kernels_missing():
        return 1
    torch.set_num_threads(1)
    kept = keep_freed_memory()
    streaming = fused._load()
    conv, layer = nn.Conv2d(64, 64, 3, padding=1, bias=False), BcosConv2d(64, 64, 3, padding=1)
    x = torch.randn(32, 64, 32, 32, requires_grad=True)
    grad = torch.randn(32, 64, 32, 32)
    with tempfile.TemporaryDirectory() as folder:
        builds = {"streaming": streaming, "ordinary": ordinary_store_build(folder)}
        times: dict[str, list[float]] = {"nn.Conv2d": [], "streaming": [], "ordinary": []}
        try:
            for _ in range(args.repeats + 2):
                for name in times:
                    fused._STATE["lib"] = builds.get(name, streaming)
                    module = conv if name == "nn.Conv2d" else layer
                    t0 = time.process_time()
                    module(x).backward(grad)
                    times[name].append(time.process_time() - t0)
        finally:
            fused._STATE["lib"] = streaming
    med = {name: statistics.median(values[2:]) for name, values in times.items()}
    result = {
        "benchmark": "bcos_streaming_stores", "threads": 1, "clock": "cpu", "repeats": args.repeats,
        "kept_freed_memory": kept, "load_avg_1min": round(os.getloadavg()[0], 2),
        "forward_backward_ms": {name: round(1e3 * value, 2) for name, value in med.items()},
        "ratio_to_conv": {name: round(med[name] / med["nn.Conv2d"], 3) for name in ("streaming", "ordinary")},
        "ordinary_over_streaming": round(med["ordinary"] / med["streaming"], 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

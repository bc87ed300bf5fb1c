"""Speed of one B-cos convolution relative to ``nn.Conv2d`` of the same shape (issue 2).

Times, in one interleaved run, the forward pass (inference, under ``torch.no_grad``) and the
forward + backward pass (input and weight gradients, as in training) of

* ``nn.Conv2d`` (no bias), the reference,
* ``linearlens.layers.BcosConv2d`` (B = 2, no MaxOut, gamma = 1),
* the B-cos convolution of the ``bcos`` 0.1.3 package (B = 2, no MaxOut), when it is installed
  (``pip install bcos==0.1.3 --no-deps``; it is a benchmark-only comparison, not a dependency),

and reports every time as a ratio to the convolution's, median over the repeats.  All three layers
get the same kernel; the two B-cos layers are checked to compute the same outputs first.

Usage: ``python benchmarks/bench_bcos_layer.py [--repeats 30] [--warmup 5] [--max-out 1] [--b 2]``.
The last line of output is a JSON object (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linearlens.layers import BcosConv2d

GOAL_FORWARD = 1.10
GOAL_FORWARD_BACKWARD = 1.25


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory instead of returning it to the OS (``mallopt``).

    On this VM a first touch of fresh memory costs more than the arithmetic done on it (an 8 MiB
    buffer: about 3-10 ms of page faults against 0.1 ms to fill it warm), and how often each layer
    gets fresh pages depends on the allocation history.  With ``--keep-freed-memory`` the timings
    measure computation only.  Returns whether the setting was applied.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(
        libc.mallopt(option, value)
        for option, value in ((m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 40), (m_top_pad, 1 << 28))
    )


def load_bcos_package() -> tuple[type | None, str]:
    """The ``bcos`` package's BcosConv2d, or ``None`` and the reason it is not there."""
    try:
        import bcos
        from bcos.modules import BcosConv2d as PackageBcosConv2d
    except ImportError as err:
        return None, f"bcos package not importable ({err}); install it with `pip install bcos==0.1.3 --no-deps`"
    version = getattr(bcos, "__version__", "?")
    return PackageBcosConv2d, f"bcos {version}"


class _FewestPasses(torch.autograd.Function):
    """``nn.Conv2d`` plus the fewest memory passes any exact B-cos layer must add to it.

    Forward: one read of the input (the patch norms need every ``x^2``) and one pass producing the
    output from the convolution's (the dynamic scale).  Backward: one pass making ``dL/do`` from
    ``dL/dy`` (it differs from ``dL/dy`` by the scale), one channel reduction of ``dL/dy * o`` (the
    gradient through the patch norm) and one correction of ``dL/dx`` by ``x`` times it.  The arithmetic
    is a stand-in of the same memory traffic, not the B-cos transform: its time is the floor an
    eager (unfused) implementation can reach on top of the convolution.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        out = F.conv2d(x, weight, None, 1, 1)
        per_position = x.sum(1, keepdim=True)
        ctx.save_for_backward(x, weight, out, per_position)
        return out * per_position

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, weight, out, per_position = ctx.saved_tensors
        grad_linear = grad_out * per_position
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_linear, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, (True, True, False)
        )
        reduced = grad_linear.mul_(out).sum(1, keepdim=True)
        grad_x.addcmul_(x, reduced)
        return grad_x, grad_w


class FewestPassesConv(nn.Module):
    """Module wrapper of :class:`_FewestPasses` (3x3, padding 1, no bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, channels, 3, 3) / (3 * channels**0.5))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return _FewestPasses.apply(x, self.weight)
        out = F.conv2d(x, self.weight, None, 1, 1)
        return out.mul_(x.sum(1, keepdim=True))


def forward_fn(layer: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            layer(x)

    return run


def forward_backward_fn(layer: nn.Module, x: Tensor, grad_out: Tensor) -> Callable[[], None]:
    """Forward, then the gradients of ``<grad_out, y>`` w.r.t. the input and every weight."""
    x = x.clone().requires_grad_(True)
    params = [p for p in layer.parameters() if p.requires_grad]

    def run() -> None:
        torch.autograd.grad(layer(x), [x, *params], grad_out)

    return run


def time_interleaved(
    cases: dict[str, Callable[[], None]], repeats: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> dict[str, list[float]]:
    """Seconds per call of every case; each round runs every case once, in a rotating order."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = clock()
            cases[name]()
            times[name].append(clock() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported; >= 10)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--b", type=float, default=2.0)
    parser.add_argument("--max-out", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--keep-freed-memory", action="store_true",
        help="mallopt: never return freed memory to the OS (times without page-fault costs)",
    )
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="wall: elapsed time (default); cpu: this thread's CPU time, which a busy machine does not "
        "inflate (needs --threads 1)",
    )
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use it with --threads 1")
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.repeats < 10:
        parser.error("--repeats must be at least 10")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, n, s = args.channels, args.batch, args.size
    x = torch.randn(n, c, s, s)
    grad_out = torch.randn(n, c, s, s)

    conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
    ours = BcosConv2d(c, c, 3, padding=1, b=args.b, max_out=args.max_out)
    layers: dict[str, nn.Module] = {"nn.Conv2d": conv, "linearlens": ours}
    if args.max_out == 1:
        layers["fewest_passes"] = FewestPassesConv(c)
    package_cls, package_note = load_bcos_package()
    print(f"comparison layer: {package_note}")
    if package_cls is not None:
        theirs = package_cls(c, c, 3, padding=1, b=args.b, max_out=args.max_out)
        with torch.no_grad():
            theirs.linear.weight.copy_(ours.weight)
            # nn.Conv2d gets the first kernels so that its output has the shape of the others'.
            conv.weight.copy_(ours.weight[:: args.max_out])
            diff = (theirs(x) - ours(x)).abs().max() / ours(x).abs().max()
        print(f"same kernels: max |bcos - linearlens| / max |linearlens| = {float(diff):.2e}")
        layers["bcos"] = theirs
    else:
        print("SKIPPING the bcos column: " + package_note)

    cases: dict[str, Callable[[], None]] = {}
    for name, layer in layers.items():
        cases[f"{name}/forward"] = forward_fn(layer, x)
        cases[f"{name}/forward_backward"] = forward_backward_fn(layer, x, grad_out)
    load_before = os.getloadavg()[0]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    times = time_interleaved(cases, args.repeats, args.warmup, clock)
    load_after = os.getloadavg()[0]

    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    result: dict = {
        "benchmark": "bcos_layer",
        "shape": {"batch": n, "in": c, "out": c, "kernel": 3, "padding": 1, "hw": s},
        "b": args.b,
        "max_out": args.max_out,
        "threads": args.threads,
        "keep_freed_memory": kept,
        "clock": args.clock,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_avg_1min": [round(load_before, 2), round(load_after, 2)],
        "conv_ms": {"forward": round(1e3 * med["nn.Conv2d/forward"], 3),
                    "forward_backward": round(1e3 * med["nn.Conv2d/forward_backward"], 3)},
    }
    header = ("layer", "forward ms", "ratio", "(min)", "fwd+bwd ms", "ratio", "(min)")
    print("{:12s} {:>12s} {:>7s} {:>7s} {:>12s} {:>7s} {:>7s}".format(*header))
    for name in layers:
        f, fb = f"{name}/forward", f"{name}/forward_backward"
        ratios = {
            "forward_ms": round(1e3 * med[f], 3),
            "forward_backward_ms": round(1e3 * med[fb], 3),
            "forward_ratio": round(med[f] / med["nn.Conv2d/forward"], 3),
            "forward_backward_ratio": round(med[fb] / med["nn.Conv2d/forward_backward"], 3),
            "forward_ratio_of_min": round(low[f] / low["nn.Conv2d/forward"], 3),
            "forward_backward_ratio_of_min": round(low[fb] / low["nn.Conv2d/forward_backward"], 3),
        }
        print(
            f"{name:12s} {ratios['forward_ms']:12.2f} {ratios['forward_ratio']:7.3f} "
            f"{ratios['forward_ratio_of_min']:7.3f} {ratios['forward_backward_ms']:12.2f} "
            f"{ratios['forward_backward_ratio']:7.3f} {ratios['forward_backward_ratio_of_min']:7.3f}"
        )
        if name != "nn.Conv2d":
            result[name] = ratios
    if "bcos" not in result:
        result["bcos"] = None
        result["bcos_skipped"] = package_note
    ll = result["linearlens"]
    result["goals"] = {
        "forward_ratio<=1.10": ll["forward_ratio"] <= GOAL_FORWARD,
        "forward_backward_ratio<=1.25": ll["forward_backward_ratio"] <= GOAL_FORWARD_BACKWARD,
        "faster_than_bcos": None if result["bcos"] is None else (
            ll["forward_ms"] < result["bcos"]["forward_ms"]
            and ll["forward_backward_ms"] < result["bcos"]["forward_backward_ms"]
        ),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

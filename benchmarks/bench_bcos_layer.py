"""Speed of one B-cos convolution relative to ``nn.Conv2d`` of the same shape (issues 2 and 12).

Times, in one run, interleaved round by round (every case once per round, in a rotating order), the
forward pass (inference, under ``torch.no_grad``) and the forward + backward pass (input and weight
gradients, as in training) of

* ``nn.Conv2d`` (no bias), the reference, and a second ``nn.Conv2d`` of the same shape (calibration: its
  ratio to the first measures the method's noise and must read 1.00 +- 0.02),
* ``linearlens``: ``linearlens.layers.BcosConv2d`` (B = 2, no MaxOut, gamma = 1) with its fused kernels,
* ``linearlens_eager``: the same layer with the fused kernels switched off (the fallback path),
* ``fewest_passes``: ``nn.Conv2d`` plus the fewest memory passes an exact *unfused* B-cos layer needs,
* ``bcos``: the B-cos convolution of the ``bcos`` 0.1.3 package (extra ``bench``), same kernels,

first with 1 thread on the process CPU clock (``time.process_time``, which a loaded machine does not
inflate by waiting), then with 2 threads (process CPU clock, all threads, and wall clock).  Ratios are
medians over the rounds, with the ratio of the minima beside them.  Then it counts, with the PyTorch
profiler, the operations that read or write a full-size tensor besides the convolution (the memory
passes; the fused kernels are labelled with ``record_function``), and times one training step
(forward, BCE loss, backward) of the CIFAR-10 network (``bcos_cifar``) against the same network built from
the ``bcos`` package's layers.

Usage: ``python benchmarks/bench_bcos_layer.py [--repeats 30] [--max-out 1] [--b 2]``.
The last line of output is a JSON object (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import contextlib
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
from linearlens.layers import _bcos_fused as fused
from linearlens.layers import _bcos_transposed as transposed
from linearlens.models import create_model
from linearlens.training import bce_loss

GOAL_FORWARD = 1.05
GOAL_FORWARD_BACKWARD = 1.15
GOAL_SPEEDUP_OVER_BCOS = 1.3
FUSED_SUPPORTS = fused.supports  # restored after every case (``Eager`` switches it off for a backward)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a benchmark with no rounds has no median)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def transposing_kernels_missing() -> bool:
    """Print the benchmarks' JSON error line and return True when the transposing kernels are not built."""
    from linearlens.layers import _bcos_transposed

    if _bcos_transposed.available():
        return False
    print(json.dumps({"error": "transposing kernels unavailable (they need AVX-512 and a C compiler)"}))
    return True


def keep_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory instead of returning it to the OS (``mallopt``).

    On this VM a first touch of fresh memory costs more than the arithmetic done on it (an 8 MiB
    buffer: about 3-10 ms of page faults against 0.1 ms to fill it warm), and how often each layer
    gets fresh pages depends on the allocation history.  With it the timings measure computation
    only.  Returns whether the setting was applied.
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
        return None, f"bcos package not importable ({err}); install the extra: pip install -e .[bench]"
    return PackageBcosConv2d, f"bcos {getattr(bcos, '__version__', '?')}"


class _FewestPasses(torch.autograd.Function):
    """``nn.Conv2d`` plus the fewest memory passes any exact, unfused B-cos layer must add to it.

    Forward: one read of the input (the patch norms need every ``x^2``) and one pass producing the
    output from the convolution's (the dynamic scale).  Backward: one pass making ``dL/do`` from
    ``dL/dy``, one channel reduction of ``dL/dy * o`` and one correction of ``dL/dx`` by ``x`` times it.
    The arithmetic is a stand-in of the same memory traffic, not the B-cos transform.
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


class Eager(nn.Module):
    """Runs ``layer`` with the fused kernels switched off (the eager fallback path)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        fused.supports = lambda *tensors, **kwargs: False
        try:
            out = self.layer(x)
            if out.requires_grad:  # the backward must run eagerly too (the caller restores the kernels)
                out.register_hook(lambda g: setattr(fused, "supports", lambda *t, **kwargs: False))
            return out
        finally:
            fused.supports = FUSED_SUPPORTS


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
        try:
            torch.autograd.grad(layer(x), [x, *params], grad_out)
        finally:
            fused.supports = FUSED_SUPPORTS

    return run


def time_interleaved(
    cases: dict[str, Callable[[], None]], repeats: int, warmup: int, clock: Callable[[], float]
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


CL = " [channels_last]"  # suffix of the cases whose input (and gradient) are channels-last tensors


def ratios(times: dict[str, list[float]], layers: list[str], reference: str = "nn.Conv2d") -> dict:
    """Per layer: median times and their ratios to ``reference`` (the contiguous-layout ``nn.Conv2d``); the
    channels-last rows also get ``*_same_layout`` ratios, to ``nn.Conv2d`` on the same channels-last input."""
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    table = {}
    for name in layers:
        f, fb = f"{name}/forward", f"{name}/forward_backward"
        row = {
            "forward_ms": round(1e3 * med[f], 3),
            "forward_backward_ms": round(1e3 * med[fb], 3),
            "forward_ratio": round(med[f] / med[f"{reference}/forward"], 3),
            "forward_backward_ratio": round(med[fb] / med[f"{reference}/forward_backward"], 3),
            "forward_ratio_of_min": round(low[f] / low[f"{reference}/forward"], 3),
            "forward_backward_ratio_of_min": round(low[fb] / low[f"{reference}/forward_backward"], 3),
        }
        same = f"{reference}{CL}"
        if name.endswith(CL) and f"{same}/forward" in med:
            row.update({
                "forward_ratio_same_layout": round(med[f] / med[f"{same}/forward"], 3),
                "forward_backward_ratio_same_layout": round(med[fb] / med[f"{same}/forward_backward"], 3),
                "forward_ratio_of_min_same_layout": round(low[f] / low[f"{same}/forward"], 3),
                "forward_backward_ratio_of_min_same_layout": round(low[fb] / low[f"{same}/forward_backward"], 3),
            })
        table[name] = row
    return table


def print_table(title: str, table: dict) -> None:
    print(title)
    header = ("layer", "forward ms", "ratio", "(min)", "fwd+bwd ms", "ratio", "(min)", "same layout f / fb")
    print("{:34s} {:>11s} {:>7s} {:>7s} {:>11s} {:>7s} {:>7s}   {}".format(*header))
    for name, r in table.items():
        same = ""
        if "forward_ratio_same_layout" in r:
            f_same, fb_same = r["forward_ratio_same_layout"], r["forward_backward_ratio_same_layout"]
            same = (f"{f_same:.3f} ({r['forward_ratio_of_min_same_layout']:.3f}) / "
                    f"{fb_same:.3f} ({r['forward_backward_ratio_of_min_same_layout']:.3f})")
        print(
            f"{name:34s} {r['forward_ms']:11.2f} {r['forward_ratio']:7.3f} {r['forward_ratio_of_min']:7.3f} "
            f"{r['forward_backward_ms']:11.2f} {r['forward_backward_ratio']:7.3f} "
            f"{r['forward_backward_ratio_of_min']:7.3f}   {same}"
        )


@contextlib.contextmanager
def labelled_fused_kernels():
    """Label every full-size fused-kernel call with ``record_function`` so that the profiler sees it (the
    transposing kernels of ``_bcos_transposed`` included; ``patch_norms`` works on the small maps only)."""
    modules = {fused: ("channel_squares", "scale_forward", "scale_backward"),
               transposed: ("squares_to_nhwc", "scale_forward_to_nchw", "scale_backward_from_nchw",
                            "correct_to_nchw")}
    originals = {(module, n): getattr(module, n) for module, names in modules.items() for n in names}

    def labelled(name, fn):
        def call(*args, **kwargs):
            with torch.profiler.record_function(f"fused::{name}"):
                return fn(*args, **kwargs)

        return call

    for (module, n), fn in originals.items():
        setattr(module, n, labelled(n, fn))
    try:
        yield
    finally:
        for (module, n), fn in originals.items():
            setattr(module, n, fn)


def count_passes(fn: Callable[[], None], full_numel: int) -> dict:
    """Operations other than the convolution (and its backward) that take a full-size tensor.

    Counted from the profiler's operator events with their input shapes: an operation whose inputs
    include a tensor of at least ``full_numel`` elements reads it (one memory pass or more).  The fused
    kernels are counted by their ``record_function`` labels (each reads and writes full tensors once).
    """
    with labelled_fused_kernels(), torch.profiler.profile(record_shapes=True) as prof:
        fn()
    ops: dict[str, int] = {}
    skip = ("conv", "convolution", "mkldnn", "autograd::", "aten::empty", "aten::view", "aten::unflatten",
            "aten::detach", "aten::as_strided", "aten::reshape", "aten::expand", "aten::zeros", "aten::ones",
            "aten::unsqueeze", "aten::resize_", "aten::set_", "aten::_unsafe_view", "aten::flatten",
            "aten::alias", "aten::slice", "aten::select", "aten::new_empty", "aten::new_zeros", "aten::t",
            "aten::to", "aten::contiguous", "aten::numpy_T", "aten::lift_fresh", "aten::zero_", "aten::fill_")
    for event in prof.events():
        name = event.name
        if name.startswith("fused::"):
            ops[name] = ops.get(name, 0) + 1
            continue
        if any(s in name for s in skip) or not name.startswith("aten::"):
            continue
        if event.cpu_parent is not None and event.cpu_parent.name.startswith("aten::") and not \
                event.cpu_parent.name.startswith(("aten::conv", "aten::mkldnn", "aten::convolution")):
            continue  # counted with its top-level caller
        shapes = event.input_shapes or []
        big = any(isinstance(s, list) and s and all(isinstance(d, int) for d in s) and _numel(s) >= full_numel
                  for s in shapes)
        if big:
            ops[name] = ops.get(name, 0) + 1
    return {"count": sum(ops.values()), "ops": ops}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def network_step_fn(net: nn.Module, x: Tensor, labels: Tensor) -> Callable[[], None]:
    """One training step's forward, BCE loss (Eq. (16)) and backward."""

    def run() -> None:
        net.zero_grad(set_to_none=True)
        try:
            bce_loss(net(x), labels).backward()
        finally:
            fused.supports = FUSED_SUPPORTS

    return run


def network_steps(args: argparse.Namespace, package_available: bool) -> dict:
    """Training-step time of ``bcos_cifar`` (linearlens layers) relative to the package-layer twin."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "cpu_recipe"))
    results = {}
    for max_out in (1, 2):
        torch.manual_seed(0)
        ours = create_model("bcos_cifar", b=2.0, max_out=max_out, width=args.net_width, width_scaled_gamma=True)
        x, labels = torch.rand(args.net_batch, 3, 32, 32), torch.randint(0, 10, (args.net_batch,))
        x_cl = x.contiguous(memory_format=torch.channels_last)
        cases = {"linearlens": network_step_fn(ours, x, labels),
                 "linearlens_eager": network_step_fn(Eager(ours), x, labels),
                 "linearlens" + CL: network_step_fn(ours, x_cl, labels)}
        if package_available:
            from package_net import PackageCifarNet

            twin = PackageCifarNet(ours)
            with torch.no_grad():  # before the logit layer, whose bias would hide differences
                theirs_features = twin.features(twin.encoding(x))
                ours_features = ours.features(ours.encoding(x))
                diff = float((theirs_features - ours_features).abs().max() / ours_features.abs().max())
            cases["bcos"] = network_step_fn(twin, x, labels)
            cases["bcos" + CL] = network_step_fn(twin, x_cl, labels)
        times = time_interleaved(cases, args.net_repeats, 2, time.process_time)
        med = {k: statistics.median(v) for k, v in times.items()}
        low = {k: min(v) for k, v in times.items()}
        row = {"ms": {k: round(1e3 * v, 1) for k, v in med.items()},
               "eager_over_fused": round(med["linearlens_eager"] / med["linearlens"], 3),
               "channels_last_over_contiguous": round(med["linearlens" + CL] / med["linearlens"], 3)}
        if "bcos" in med:
            row["bcos_feature_rel_diff"] = diff
            row["bcos_over_linearlens"] = round(med["bcos"] / med["linearlens"], 3)
            row["bcos_over_linearlens_of_min"] = round(low["bcos"] / low["linearlens"], 3)
            row["channels_last_bcos_over_linearlens"] = round(med["bcos" + CL] / med["linearlens" + CL], 3)
        print(f"network step, width {args.net_width}, max_out {max_out}, batch {args.net_batch}: {row}")
        results[f"max_out_{max_out}"] = row
    return results


def explain_all_section(args: argparse.Namespace) -> dict:
    """``explain(model, x, "all")`` (frozen forward with the layers' decided scales, then one gradient pass
    per class) with the fused kernels against the eager path, ``bcos_cifar``, 1 thread, CPU clock."""
    from linearlens.explain import explain

    torch.set_num_threads(1)
    results = {}
    for max_out in (1, 2):
        torch.manual_seed(0)
        model = create_model("bcos_cifar", b=2.0, max_out=max_out, width=args.net_width, width_scaled_gamma=True)
        model.eval()
        x = torch.rand(args.explain_images, 3, 32, 32)

        def fast(model=model, x=x) -> None:
            explain(model, x, "all")

        def eager(model=model, x=x) -> None:
            fused.supports = lambda *tensors, **kwargs: False
            try:
                explain(model, x, "all")
            finally:
                fused.supports = FUSED_SUPPORTS

        times = time_interleaved({"fused": fast, "eager": eager}, args.net_repeats, 1, time.process_time)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[f"max_out_{max_out}"] = {"fused_ms": round(1e3 * med["fused"], 1),
                                         "eager_ms": round(1e3 * med["eager"], 1),
                                         "eager_over_fused": round(med["eager"] / med["fused"], 3)}
        print(f"explain(model, x, 'all'), width {args.net_width}, max_out {max_out}, {args.explain_images} images: "
              f"{results[f'max_out_{max_out}']}")
    return {"images": args.explain_images, "width": args.net_width, "threads": 1, "clock": "cpu", **results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported; >= 30)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--b", type=float, default=2.0)
    parser.add_argument("--max-out", type=int, default=1)
    parser.add_argument("--net-width", type=float, default=0.25)
    parser.add_argument("--net-batch", type=int, default=64)
    parser.add_argument("--net-repeats", type=int, default=12)
    parser.add_argument("--explain-images", type=int, default=16)
    parser.add_argument("--only-explain", action="store_true",
                        help="only the all-class explanation with and without the fused kernels")
    parser.add_argument("--no-keep-freed-memory", action="store_true",
                        help="let malloc return freed memory to the OS (timings then include page faults)")
    args = parser.parse_args(argv)
    if args.repeats < 30:
        parser.error("--repeats must be at least 30")
    kept = False if args.no_keep_freed_memory else keep_freed_memory()
    print(f"fused kernels: {'available' if fused.available() else fused.unavailable_reason()}")
    if args.only_explain:
        print(json.dumps({"benchmark": "bcos_layer_explain_all", "keep_freed_memory": kept,
                          "explain_all": explain_all_section(args)}))
        return 0

    torch.manual_seed(0)
    c, n, s = args.channels, args.batch, args.size
    x = torch.randn(n, c, s, s)
    grad_out = torch.randn(n, c, s, s)
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
    conv_again = nn.Conv2d(c, c, 3, padding=1, bias=False)
    ours = BcosConv2d(c, c, 3, padding=1, b=args.b, max_out=args.max_out)
    layers: dict[str, nn.Module] = {"nn.Conv2d": conv, "nn.Conv2d (again)": conv_again, "linearlens": ours,
                                    "linearlens_eager": Eager(ours)}
    if args.max_out == 1:
        layers["fewest_passes"] = FewestPassesConv(c)
    package_cls, package_note = load_bcos_package()
    print(f"comparison layer: {package_note}")
    if package_cls is not None:
        theirs = package_cls(c, c, 3, padding=1, b=args.b, max_out=args.max_out)
        with torch.no_grad():
            theirs.linear.weight.copy_(ours.weight)
            conv.weight.copy_(ours.weight[:: args.max_out])
            conv_again.weight.copy_(ours.weight[:: args.max_out])
            diff = (theirs(x) - ours(x)).abs().max() / ours(x).abs().max()
        print(f"same kernels: max |bcos - linearlens| / max |linearlens| = {float(diff):.2e}")
        layers["bcos"] = theirs
    else:
        print("SKIPPING the bcos column: " + package_note)

    # The same layers on a channels-last input (PyTorch's other dense layout, in which oneDNN convolves
    # without reordering): ``nn.Conv2d`` and B-cos layers alike return channels-last outputs.
    x_cl, grad_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_out))
    for name in ("nn.Conv2d", "linearlens", "bcos"):
        if name in layers:
            layers[name + CL] = layers[name]
    cases: dict[str, Callable[[], None]] = {}
    for name, layer in layers.items():
        inputs = (x_cl, grad_cl) if name.endswith(CL) else (x, grad_out)
        cases[f"{name}/forward"] = forward_fn(layer, inputs[0])
        cases[f"{name}/forward_backward"] = forward_backward_fn(layer, *inputs)

    result: dict = {
        "benchmark": "bcos_layer",
        "shape": {"batch": n, "in": c, "out": c, "kernel": 3, "padding": 1, "hw": s},
        "b": args.b, "max_out": args.max_out, "repeats": args.repeats, "keep_freed_memory": kept,
        "fused_kernels": fused.available(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
    }
    for threads in (1, 2):
        torch.set_num_threads(threads)
        clocks = {"cpu": time.process_time} if threads == 1 else {"cpu": time.process_time, "wall": time.perf_counter}
        for clock_name, clock in clocks.items():
            load_before = os.getloadavg()[0]
            times = time_interleaved(cases, args.repeats, args.warmup, clock)
            table = ratios(times, list(layers))
            key = f"threads_{threads}_{clock_name}"
            print_table(f"\n{threads} thread(s), {clock_name} clock (load {load_before:.1f}):", table)
            result[key] = {"load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)], **table}

    torch.set_num_threads(1)
    full = n * c * s * s
    passes = {}
    for name, layer in layers.items():
        if name == "nn.Conv2d (again)":
            continue
        inputs = (x_cl, grad_cl) if name.endswith(CL) else (x, grad_out)
        passes[name] = {"forward": count_passes(forward_fn(layer, inputs[0]), full),
                        "forward_backward": count_passes(forward_backward_fn(layer, *inputs), full)}
    print("\nfull-size memory passes besides the convolution (profiler):")
    for name, p in passes.items():
        print(f"  {name:32s} forward {p['forward']['count']:2d} {p['forward']['ops']}")
        print(f"  {'':32s} fwd+bwd {p['forward_backward']['count']:2d} {p['forward_backward']['ops']}")
    result["full_tensor_passes"] = passes
    result["network_training_step"] = {"width": args.net_width, "batch": args.net_batch, "threads": 1,
                                       "clock": "cpu", **network_steps(args, package_cls is not None)}
    result["explain_all"] = explain_all_section(args)

    one = result["threads_1_cpu"]
    ll = one["linearlens"]
    calibration = one["nn.Conv2d (again)"]
    result["calibration"] = {"forward_ratio": calibration["forward_ratio"],
                             "forward_backward_ratio": calibration["forward_backward_ratio"],
                             "within_0.02": abs(calibration["forward_ratio"] - 1) <= 0.02
                             and abs(calibration["forward_backward_ratio"] - 1) <= 0.02}
    speedup = None if "bcos" not in one else round(one["bcos"]["forward_backward_ms"] / ll["forward_backward_ms"], 3)
    result["speedup_over_bcos_forward_backward"] = speedup
    cl = one["linearlens" + CL]
    result["goals"] = {
        f"forward_ratio<={GOAL_FORWARD}": ll["forward_ratio"] <= GOAL_FORWARD,
        f"forward_backward_ratio<={GOAL_FORWARD_BACKWARD}": ll["forward_backward_ratio"] <= GOAL_FORWARD_BACKWARD,
        f"speedup_over_bcos_forward_backward>={GOAL_SPEEDUP_OVER_BCOS}": None if speedup is None
        else speedup >= GOAL_SPEEDUP_OVER_BCOS,
        # channels-last layer against the (default, contiguous) nn.Conv2d, and against nn.Conv2d on the same
        # channels-last input: the first is what a user switching layouts gets, the second the like-for-like cost.
        f"channels_last_forward_ratio<={GOAL_FORWARD}": cl["forward_ratio"] <= GOAL_FORWARD,
        f"channels_last_forward_backward_ratio<={GOAL_FORWARD_BACKWARD}":
            cl["forward_backward_ratio"] <= GOAL_FORWARD_BACKWARD,
        f"channels_last_forward_ratio_same_layout<={GOAL_FORWARD}": cl["forward_ratio_same_layout"] <= GOAL_FORWARD,
        f"channels_last_forward_backward_ratio_same_layout<={GOAL_FORWARD_BACKWARD}":
            cl["forward_backward_ratio_same_layout"] <= GOAL_FORWARD_BACKWARD,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of explaining all classes of a batch at once (issue 2).

For a batch of images and all K = 10 classes of ``create_model("bcos_cifar", width=..., max_out=...)``
(plain, ``max_out=1``, and MaxOut, ``max_out=2``), times in one interleaved run:

* ``all``: one call ``explain(model, x, "all")``;
* ``single``: one single-class call ``explain(model, x, labels)``;
* the two components every explanation is made of: the frozen forward pass
  (``frozen_forward``) and one input-gradient pass (one row of ``W(x)`` for every image);
* the per-image, per-class baseline of the ``bcos`` package (0.1.3): its own ``model.explain(img, idx)``
  (``BcosUtilMixin.explain``: batch of one image, one class per call, forward in its explanation mode,
  backward, ``gradient_to_image``) on a model built from the package's ``BcosConv2d`` and
  ``LogitLayer`` with the same weights -- it needs no downloaded weights.  Its core alone (forward
  and backward, without ``gradient_to_image``) is timed too, and so is linearlens called the same way
  (``explain(model, x[i:i+1], c)`` per image and class), which is the fallback when ``bcos`` is absent.

The floor of an all-class call is one forward pass plus K input-gradient passes, about
``(1 + K) / 2`` single-class calls when a gradient pass costs what a forward pass does; the measured
floor ``t_forward + K t_gradient`` is reported next to that nominal one.

Usage: ``python benchmarks/bench_explain.py [--width 0.5] [--images 64] [--repeats 10]``.
The last line of output is a JSON object (see ``benchmarks/README.md``).  The model is untrained
(random weights): the cost of an explanation does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench_bcos_layer import keep_freed_memory  # same folder: run as a script
from linearlens.data import load_cifar10
from linearlens.explain import explain
from linearlens.explain.linear import frozen_forward, rows_of
from linearlens.layers import BcosConv2d
from linearlens.models import create_model

NUM_CLASSES = 10
GOAL_FLOOR = 1.3
GOAL_THROUGHPUT = 10.0


# --- the bcos package baseline --------------------------------------------------------------------------


class _Gamma(nn.Module):
    """The fixed layer output scale gamma of App. C.1 (the package's BcosConv2d has none)."""

    def __init__(self, gamma: float) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def package_twin(model: nn.Module) -> nn.Module | None:
    """The same network built from the ``bcos`` package's layers, with the same weights, or ``None``.

    It takes the 6-channel encoded image (the package applies AddInverse in its data pipeline).
    """
    try:
        from bcos.common import BcosUtilMixin
        from bcos.modules import BcosConv2d as PackageBcosConv2d
        from bcos.modules import LogitLayer as PackageLogitLayer
    except ImportError:
        return None

    class PackageNet(BcosUtilMixin, nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for ours in model.features:
                assert isinstance(ours, BcosConv2d)
                theirs = PackageBcosConv2d(
                    ours.in_channels, ours.out_channels, ours.kernel_size, ours.stride, ours.padding,
                    b=ours.b, max_out=ours.max_out,
                )
                with torch.no_grad():
                    theirs.linear.weight.copy_(ours.weight)
                layers += [theirs, _Gamma(ours.scale)]
            self.features = nn.Sequential(*layers)
            self.logits = PackageLogitLayer(model.logits.temperature, model.logits.bias)

        def forward(self, x: Tensor) -> Tensor:
            return self.logits(self.features(x).mean(dim=(2, 3)))

    return PackageNet().eval()


def package_explain_fn(net: nn.Module, encoded: Tensor, images: int, core_only: bool) -> Callable[[], None]:
    """``images`` images x K classes, one ``net.explain`` call (or its forward + backward) each."""
    leaves = [encoded[i : i + 1].clone().requires_grad_(True) for i in range(images)]

    def full() -> None:
        for leaf in leaves:
            for c in range(NUM_CLASSES):
                net.explain(leaf, idx=c)

    def core() -> None:
        for leaf in leaves:
            for c in range(NUM_CLASSES):
                with torch.enable_grad(), net.explanation_mode():
                    out = net(leaf)
                    (grad,) = torch.autograd.grad(out[0, c], leaf)
                (leaf * grad).sum(1)

    return core if core_only else full


# --- linearlens cases -----------------------------------------------------------------------------------


def per_image_fn(model: nn.Module, x: Tensor, images: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(images):
            for c in range(NUM_CLASSES):
                explain(model, x[i : i + 1], c)

    return run


def gradient_pass_fn(model: nn.Module, x: Tensor) -> Callable[[], None]:
    """One input-gradient pass (one row of ``W(x)`` per image) through a frozen graph that
    ``run.prepare()`` builds, untimed, before every timed call."""
    state: dict = {}

    def prepare() -> None:
        selected, _, source, _ = frozen_forward(model, x, "all")
        state.update(selected=selected, source=source)

    def run() -> None:
        torch.autograd.grad(state["selected"][:, 3].sum(), state["source"])

    run.prepare = prepare  # type: ignore[attr-defined]
    return run


def rows_batched_fn(model: nn.Module, x: Tensor) -> Callable[[], None]:
    """All K rows in one ``autograd.grad(..., is_grads_batched=True)`` (the alternative to ``rows_of``)."""
    state: dict = {}

    def prepare() -> None:
        selected, _, source, _ = frozen_forward(model, x, "all")
        state.update(selected=selected, source=source)

    def run() -> None:
        selected = state["selected"]
        k = selected.shape[1]
        eye = torch.eye(k, dtype=selected.dtype).unsqueeze(1).expand(k, selected.shape[0], k)
        torch.autograd.grad(selected, state["source"], eye, is_grads_batched=True)

    run.prepare = prepare  # type: ignore[attr-defined]
    return run


def rows_loop_fn(model: nn.Module, x: Tensor) -> Callable[[], None]:
    """All K rows with ``rows_of`` (one input-gradient pass per class)."""
    state: dict = {}

    def prepare() -> None:
        selected, _, source, _ = frozen_forward(model, x, "all")
        state.update(selected=selected, source=source)

    def run() -> None:
        rows_of(state["selected"], state["source"])

    run.prepare = prepare  # type: ignore[attr-defined]
    return run


def time_interleaved(
    cases: dict[str, Callable[[], None]], repeats: int, warmup: int, before: dict[str, Callable[[], None]]
) -> dict[str, list[float]]:
    """Seconds per call of every case, every round running every case once in a rotating order;
    ``before[name]`` (untimed) runs before each timed call of ``name``."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            if name in before:
                before[name]()
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if name in before:
                before[name]()
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench_model(args: argparse.Namespace, max_out: int, x: Tensor, labels: Tensor) -> dict:
    torch.manual_seed(0)
    model = create_model("bcos_cifar", width=args.width, max_out=max_out).eval()
    n = x.shape[0]
    twin = package_twin(model)

    grad_pass = gradient_pass_fn(model, x)
    cases: dict[str, Callable[[], None]] = {
        "all": lambda: explain(model, x, "all"),
        "single": lambda: explain(model, x, labels),
        "forward": lambda: frozen_forward(model, x, "all"),
        "gradient_pass": grad_pass,
        "linearlens_per_image": per_image_fn(model, x, args.baseline_images),
    }
    before = {"gradient_pass": grad_pass.prepare}  # type: ignore[attr-defined]
    if args.compare_batched_rows:
        for name, make in (("rows_loop", rows_loop_fn), ("rows_batched", rows_batched_fn)):
            cases[name] = make(model, x)
            before[name] = cases[name].prepare  # type: ignore[attr-defined]
    result: dict = {"max_out": max_out, "parameters": sum(p.numel() for p in model.parameters())}
    if twin is not None:
        encoded = model.encoding(x)
        with torch.no_grad():
            ours, theirs = model(x), twin(encoded)
        result["bcos_twin_logit_rel_diff"] = float((ours - theirs).abs().max() / ours.abs().max())
        e = explain(model, x[:1], 7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            leaf = encoded[:1].clone().requires_grad_(True)
            row = twin.explain(leaf, idx=7)["dynamic_linear_weights"]
        result["bcos_twin_row_rel_diff"] = float((row[0] - e.weights[0, 0]).norm() / e.weights[0, 0].norm())
        cases["bcos_explain"] = package_explain_fn(twin, encoded, args.baseline_images, core_only=False)
        cases["bcos_core"] = package_explain_fn(twin, encoded, args.baseline_images, core_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = time_interleaved(cases, args.repeats, args.warmup, before)
    med = {k: statistics.median(v) for k, v in times.items()}

    k = NUM_CLASSES
    nominal_floor = (1 + k) / 2
    measured_floor = med["forward"] + k * med["gradient_pass"]
    ratio_single = med["all"] / med["single"]
    throughput_all = n * k / med["all"]
    per_call = args.baseline_images * k
    result.update(
        {
            "all_ms": round(1e3 * med["all"], 1),
            "single_ms": round(1e3 * med["single"], 1),
            "forward_ms": round(1e3 * med["forward"], 1),
            "gradient_pass_ms": round(1e3 * med["gradient_pass"], 1),
            "all_over_single": round(ratio_single, 3),
            "all_over_10_single": round(med["all"] / (k * med["single"]), 3),
            "nominal_floor_in_singles": nominal_floor,
            "all_over_nominal_floor": round(ratio_single / nominal_floor, 3),
            "measured_floor_ms": round(1e3 * measured_floor, 1),
            "measured_floor_in_singles": round(measured_floor / med["single"], 3),
            "all_over_measured_floor": round(med["all"] / measured_floor, 3),
            "throughput_all_per_s": round(throughput_all, 1),
            "throughput_linearlens_per_image_per_s": round(per_call / med["linearlens_per_image"], 1),
            "speedup_vs_linearlens_per_image": round(throughput_all / (per_call / med["linearlens_per_image"]), 2),
        }
    )
    if twin is not None:
        result["throughput_bcos_explain_per_s"] = round(per_call / med["bcos_explain"], 1)
        result["throughput_bcos_core_per_s"] = round(per_call / med["bcos_core"], 1)
        result["speedup_vs_bcos_explain"] = round(throughput_all / (per_call / med["bcos_explain"]), 2)
        result["speedup_vs_bcos_core"] = round(throughput_all / (per_call / med["bcos_core"]), 2)
    if args.compare_batched_rows:
        result["rows_loop_ms"] = round(1e3 * med["rows_loop"], 1)
        result["rows_batched_ms"] = round(1e3 * med["rows_batched"], 1)
        result["rows_batched_over_loop"] = round(med["rows_batched"] / med["rows_loop"], 3)
    baseline = "speedup_vs_bcos_explain" if twin is not None else "speedup_vs_linearlens_per_image"
    result["goals"] = {
        "all_over_nominal_floor<=1.3": result["all_over_nominal_floor"] <= GOAL_FLOOR,
        f"{baseline}>=10": result[baseline] >= GOAL_THROUGHPUT,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=0.5, help="channel width multiplier of bcos_cifar")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported; >= 10)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--baseline-images", type=int, default=4,
        help="images explained one by one (x 10 classes) per round by the per-image baselines",
    )
    parser.add_argument("--max-out", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compare-batched-rows", action="store_true",
        help="also time all K rows with rows_of (a loop) and with one is_grads_batched=True call",
    )
    parser.add_argument(
        "--keep-freed-memory", action="store_true",
        help="mallopt: never return freed memory to the OS (times without page-fault costs)",
    )
    args = parser.parse_args(argv)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    if args.repeats < 10:
        parser.error("--repeats must be at least 10")

    torch.set_num_threads(args.threads)
    data = load_cifar10("embedded", "test")
    x = data.images[: args.images].float() / 255
    labels = data.labels[: args.images]
    if package_twin(create_model("bcos_cifar", width=0.05)) is None:
        print(
            "bcos package not installed (`pip install bcos==0.1.3 --no-deps`): SKIPPING its baseline; the "
            "per-image baseline is linearlens called one image and one class at a time"
        )
    result: dict = {
        "benchmark": "explain_all_classes",
        "model": "bcos_cifar",
        "width": args.width,
        "b": 2.0,
        "images": x.shape[0],
        "classes": NUM_CLASSES,
        "baseline_images_per_round": args.baseline_images,
        "threads": args.threads,
        "keep_freed_memory": kept,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_avg_1min_start": round(os.getloadavg()[0], 2),
        "models": [],
    }
    for max_out in args.max_out:
        r = bench_model(args, max_out, x, labels)
        print(
            f"max_out={max_out}: all {r['all_ms']:.0f} ms, single {r['single_ms']:.0f} ms, "
            f"all/single {r['all_over_single']:.2f} (nominal floor {r['nominal_floor_in_singles']}, "
            f"measured floor {r['measured_floor_in_singles']:.2f}), all/(10 single) {r['all_over_10_single']:.2f}; "
            f"throughput {r['throughput_all_per_s']:.0f}/s vs per-image: "
            + ", ".join(f"{k[len('speedup_vs_'):]} x{v}" for k, v in r.items() if k.startswith("speedup_vs_"))
        )
        result["models"].append(r)
    result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

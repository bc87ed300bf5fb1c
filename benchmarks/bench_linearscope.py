"""Benchmark of the LinearScope linear interpreter (linearlens.interpret); the last line is JSON.

Measured in one run, medians of repeats, on randomly initialised networks (seeded):

* the two-batch pass ``[x0, x1] -> [f(x0), F x1 + r]`` relative to a plain ``no_grad`` forward on ``x0``
  (goal <= 2.2x), for a 4-layer PixelShuffle upscaler and a small VGG-BN classifier;
* columns/s (impulse responses, two-batch) and rows/s (transposed system, Eq. (6)) of the upscaler;
* top-k SVD of the upscaler's F(x0): the Krylov method (ARPACK Lanczos on F^T F) against the power
  method with momentum and deflation (Alg. 1) at equal accuracy of the singular values (goal >= 5x),
  and against materialising F column by column plus a dense ``torch.linalg.svd``;
* columns/s and rows/s against plain forward passes/s (images per second through the network, no_grad) and
  forward+backward passes/s (one vector-Jacobian product per image) of the same network and batch size,
  for the upscaler and the CIFAR-10 B-cos network, with the profiler's top operations of each (where the
  interpreter's overhead goes); ``--only-throughput`` runs just this part;
* peak memory of the two-batch pass against "recording every activation" (forward hooks keeping every
  module's output, the approach of DFV that the paper replaces), each in a fresh subprocess
  (growth of the peak resident size, VmHWM reset through /proc/self/clear_refs), for the upscaler
  and a deeper EDSR-style residual upscaler.

    python benchmarks/bench_linearscope.py [--threads 2] [--quick] [--only-throughput]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from linearlens.interpret import LinearScope, krylov_svd, power_svd, run_two_batch


def sr4l(scale: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale),
    ).eval()


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.body(x)


def edsr_mini(blocks: int = 8, c: int = 64, scale: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), *[_ResBlock(c) for _ in range(blocks)],
        nn.Conv2d(c, 3 * scale**2, 3, padding=1), nn.PixelShuffle(scale),
    ).eval()


def vgg_bn() -> nn.Module:
    torch.manual_seed(0)

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    model = nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), *block(128, 128),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 16, 256), nn.ReLU(), nn.Linear(256, 10),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


NETS = {"sr4l": sr4l, "edsr_mini": edsr_mini, "vgg_bn": vgg_bn}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def forward_ratio(model: nn.Module, x: torch.Tensor, repeats: int) -> dict:
    """Plain forward on x0, plain forward on the 2N batch [x0, x1], and the two-batch pass, interleaved.

    The second isolates what the interpreter adds (rules, decisions, tracing) from how the backend's
    convolutions scale from N to 2N images, which on CPU is often worse than 2x.
    """
    probe = torch.rand_like(x).unsqueeze(0)
    both = torch.cat([x, probe[0]])
    fns = {
        "plain": lambda: model(x), "plain_2n": lambda: model(both), "two_batch": lambda: run_two_batch(model, x, probe),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for k, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "plain_ms": 1e3 * med["plain"], "plain_2n_ms": 1e3 * med["plain_2n"], "two_batch_ms": 1e3 * med["two_batch"],
        "ratio": med["two_batch"] / med["plain"], "ratio_same_batch": med["two_batch"] / med["plain_2n"],
        "backend_2n_over_n": med["plain_2n"] / med["plain"],
    }


def svd_comparison(k: int, size: int, quick: bool) -> dict:
    model = sr4l()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    scope = LinearScope(model, x, chunk_size=64)
    t = time.perf_counter()
    f = scope.materialize()[0]
    t_mat = time.perf_counter() - t
    t = time.perf_counter()
    s_ref = torch.linalg.svdvals(f.double())
    t_dense = time.perf_counter() - t
    ref = s_ref[:k]

    def error(res) -> float:
        return float(((res.singular_values.double() - ref).abs() / ref[0]).max())

    krylov_svd(scope, 2, tol=1e-3)  # warm-up (SciPy's ARPACK import and first call)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        kry = krylov_svd(scope, k, tol=1e-3)
        runs.append(time.perf_counter() - t)
    t_kry = statistics.median(runs)
    target = max(error(kry), 1e-7)
    out = {
        "k": k, "in_features": scope.in_features, "out_features": scope.out_features,
        "krylov": {"seconds": t_kry, "passes": kry.passes, "sigma_rel_error": error(kry), "arpack_tol": 1e-3},
        "materialize_plus_dense_svd": {"seconds": t_mat + t_dense, "materialize_s": t_mat, "svd_s": t_dense},
        "reference_top_sigmas": [round(float(v), 5) for v in s_ref[: k + 1]],
    }
    # Power method (Alg. 1) with the momentum of Xu et al. computed from the exact spectrum (the
    # method's best case): the loosest per-triple tolerance that reaches the Krylov accuracy.
    momenta = [float(s_ref[j + 1] ** 4 / 4) for j in range(k)]
    max_steps = 300 if quick else 1500
    best, used_tol = None, None
    for tol in (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6):
        t = time.perf_counter()
        res = power_svd(scope, k, steps=max_steps, momentum=momenta, tol=tol)
        best = {"seconds": time.perf_counter() - t, "passes": res.passes, "rayleigh_tol": tol,
                "sigma_rel_error": error(res), "reached": error(res) <= target}
        used_tol = tol
        if best["reached"]:
            break
    out["power_momentum"] = best
    # The plain power method (m = 0) at the same tolerance and step cap.
    t = time.perf_counter()
    res = power_svd(scope, k, steps=max_steps, momentum=0.0, tol=used_tol)
    out["power_plain"] = {"seconds": time.perf_counter() - t, "passes": res.passes, "rayleigh_tol": used_tol,
                          "sigma_rel_error": error(res), "reached": error(res) <= target,
                          "max_steps_per_triple": max_steps}
    return out


def _top_ops(fn, top: int = 8) -> list[list]:
    """The ``top`` operations by self CPU time in one call of ``fn`` (profiler), ``[name, ms, calls]``."""
    with torch.profiler.profile() as prof:
        fn()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [[e.key, round(e.self_cpu_time_total / 1e3, 2), e.count] for e in rows]


def throughput_vs_forward(name: str, model: nn.Module, x: torch.Tensor, count: int, chunk: int, repeats: int) -> dict:
    """Columns/s and rows/s of ``LinearScope(model, x)`` against forward and forward+backward passes/s.

    A column is one probe image through the two-batch system, so the ideal is one column per forward
    pass of one image; a row is one vector-Jacobian product, so its ideal is one forward+backward pass
    per image.  The plain passes use batches of ``chunk`` images, as the interpreter's chunks do.
    """
    scope = LinearScope(model, x, chunk_size=chunk)
    generator = torch.Generator().manual_seed(3)
    cols = torch.randperm(scope.in_features, generator=generator)[:count]
    rows = torch.randperm(scope.out_features, generator=generator)[:count]
    batch = x.expand(chunk, *x.shape[1:]).clone() + 0.01 * torch.rand(chunk, *x.shape[1:], generator=generator)
    cot = torch.randn_like(model(batch[:1]).expand(chunk, *model(batch[:1]).shape[1:]))

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    def forward_backward() -> None:
        leaf = batch.clone().requires_grad_(True)
        torch.autograd.grad(model(leaf), leaf, cot)

    fns = {"forward": forward, "forward_backward": forward_backward,
           "columns": lambda: scope.columns(cols), "rows": lambda: scope.rows(rows)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    clock = time.process_time if torch.get_num_threads() == 1 else time.perf_counter
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = clock()
            fn()
            times[k].append(clock() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "network": name, "input": list(x.shape), "count": count, "chunk": chunk,
        "clock": "process_time" if torch.get_num_threads() == 1 else "wall",
        "forward_images_per_s": chunk / med["forward"],
        "forward_backward_images_per_s": chunk / med["forward_backward"],
        "columns_per_s": count / med["columns"], "rows_per_s": count / med["rows"],
    }
    out["columns_over_forward"] = out["columns_per_s"] / out["forward_images_per_s"]
    out["rows_over_forward_backward"] = out["rows_per_s"] / out["forward_backward_images_per_s"]
    out["profile"] = {
        "forward": _top_ops(forward), "columns_one_chunk": _top_ops(lambda: scope.columns(cols[:chunk])),
        "forward_backward": _top_ops(forward_backward), "rows_one_chunk": _top_ops(lambda: scope.rows(rows[:chunk])),
    }
    print(f"{name}: columns/s {out['columns_per_s']:.1f} = {out['columns_over_forward']:.2f} x forward images/s "
          f"({out['forward_images_per_s']:.1f}); rows/s {out['rows_per_s']:.1f} = "
          f"{out['rows_over_forward_backward']:.2f} x forward+backward images/s "
          f"({out['forward_backward_images_per_s']:.1f})", flush=True)
    for k, ops in out["profile"].items():
        print(f"  top ops, {k}: " + "; ".join(f"{n} {ms} ms x{c}" for n, ms, c in ops[:6]), flush=True)
    return out


def throughput_section(args: argparse.Namespace) -> dict:
    from linearlens.models import create_model

    torch.manual_seed(0)
    bcos_net = create_model("bcos_cifar", b=2.0, max_out=1, width=0.25, width_scaled_gamma=True).eval()
    count = 64 if args.quick else 256
    return {
        "sr4l": throughput_vs_forward("sr4l", sr4l(), torch.rand(1, 3, 32, 32), count, 64, args.repeats_throughput),
        "bcos_cifar_w025": throughput_vs_forward("bcos_cifar_w025", bcos_net, torch.rand(1, 3, 32, 32), count, 64,
                                                 args.repeats_throughput),
    }


MEMORY_WORKER = """
import json, re, sys, torch
sys.path.insert(0, {root!r})
from bench_linearscope import NETS
from linearlens.interpret import run_two_batch
torch.set_num_threads({threads})
model = NETS[{net!r}]()
x = torch.rand(1, 3, {size}, {size})
with torch.no_grad():
    model(torch.rand(1, 3, 8, 8)); run_two_batch(model, torch.rand(1, 3, 8, 8))  # imports and warm-up
def mb(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident size
base = mb("VmRSS")
stored = []
with torch.no_grad():
    if {method!r} == "two_batch":
        out = run_two_batch(model, x, torch.rand(1, *x.shape))[0]
    else:
        hooks = [m.register_forward_hook(lambda m, i, o: stored.append(o)) for m in model.modules()]
        out = model(x)
peak = mb("VmHWM")
unique = {{t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in stored}}
print(json.dumps({{"peak_growth_mb": peak - base, "stored_mb": sum(unique.values()) / 2**20}}))
"""


def peak_memory(net: str, size: int, method: str, threads: int) -> dict:
    import os

    code = MEMORY_WORKER.format(root=os.path.dirname(os.path.abspath(__file__)), net=net, size=size, method=method,
                                threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and budgets (a smoke test)")
    parser.add_argument("--only-throughput", action="store_true",
                        help="only columns/rows per second against forward passes per second (and profiles)")
    parser.add_argument("--repeats-throughput", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only_throughput:
        # Fresh 16 MB activations otherwise cost page faults that vary from call to call (see
        # bench_bcos_layer.keep_freed_memory): with freed memory kept, the timings measure computation.
        from bench_bcos_layer import keep_freed_memory

        keep_freed_memory()
        section = throughput_section(args)
        print(json.dumps({"threads": args.threads, "load_average": list(__import__("os").getloadavg()),
                          "throughput": section}))
        return 0
    quick = args.quick
    result: dict = {"threads": args.threads, "quick": quick, "load_average": list(__import__("os").getloadavg())}

    # 1. Two-batch pass vs plain forward.
    sr_in = torch.rand(1, 3, 64 if quick else 128, 64 if quick else 128, generator=torch.Generator().manual_seed(0))
    cls_in = torch.rand(32 if quick else 128, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result["forward_sr4l"] = forward_ratio(sr4l(), sr_in, args.repeats)
    result["forward_vgg_bn"] = forward_ratio(vgg_bn(), cls_in, args.repeats)
    for k in ("forward_sr4l", "forward_vgg_bn"):
        r = result[k]
        print(f"{k}: two-batch / plain forward {r['ratio']:.2f}x; / plain forward of the same 2N batch "
              f"{r['ratio_same_batch']:.2f}x (plain 2N / N: {r['backend_2n_over_n']:.2f}x)", flush=True)

    # 2. Columns/s and rows/s of the upscaler at a 32x32 input (F is 27,648 x 3,072).
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    count = 64 if quick else 256
    rates = {}
    for chunk in (16, 64):
        scope = LinearScope(sr4l(), x, chunk_size=chunk)
        cols = torch.randperm(scope.in_features, generator=torch.Generator().manual_seed(3))[:count]
        rows = torch.randperm(scope.out_features, generator=torch.Generator().manual_seed(4))[:count]
        t_c = median_time(lambda scope=scope, cols=cols: scope.columns(cols), 3)
        t_r = median_time(lambda scope=scope, rows=rows: scope.rows(rows), 3)
        rates[f"chunk{chunk}"] = {"columns_per_s": count / t_c, "rows_per_s": count / t_r}
    result["rows_columns_sr4l_32x32"] = rates
    print("rows/columns per second:", rates, flush=True)

    # 3. SVD: Krylov vs power method vs materialising F.
    result["svd_sr4l"] = svd_comparison(k=4 if quick else 8, size=16 if quick else 24, quick=quick)
    svd = result["svd_sr4l"]
    print("svd:", json.dumps(svd), flush=True)

    # 4. Peak memory: two-batch pass vs recording every activation.
    memory = {}
    for net, size in (("sr4l", 128 if quick else 256), ("edsr_mini", 128 if quick else 256)):
        two = peak_memory(net, size, "two_batch", args.threads)
        rec = peak_memory(net, size, "record", args.threads)
        memory[net] = {"input": size, "two_batch_peak_mb": two["peak_growth_mb"],
                       "recording_peak_mb": rec["peak_growth_mb"], "recorded_activations_mb": rec["stored_mb"],
                       "ratio_recording_over_two_batch": rec["peak_growth_mb"] / max(two["peak_growth_mb"], 1e-9)}
    result["memory"] = memory
    print("memory:", memory, flush=True)

    summary = {
        "two_batch_over_forward_sr4l": round(result["forward_sr4l"]["ratio"], 3),
        "two_batch_over_forward_vgg_bn": round(result["forward_vgg_bn"]["ratio"], 3),
        "two_batch_over_same_batch_forward_sr4l": round(result["forward_sr4l"]["ratio_same_batch"], 3),
        "two_batch_over_same_batch_forward_vgg_bn": round(result["forward_vgg_bn"]["ratio_same_batch"], 3),
        "columns_per_s": round(max(r["columns_per_s"] for r in rates.values()), 1),
        "rows_per_s": round(max(r["rows_per_s"] for r in rates.values()), 1),
        "krylov_speedup_vs_power_momentum": round(svd["power_momentum"]["seconds"] / svd["krylov"]["seconds"], 2),
        "power_momentum_reached_krylov_accuracy": svd["power_momentum"]["reached"],
        "krylov_speedup_vs_power_plain": round(svd["power_plain"]["seconds"] / svd["krylov"]["seconds"], 2),
        "power_plain_reached_krylov_accuracy": svd["power_plain"]["reached"],
        "krylov_speedup_vs_materialize": round(svd["materialize_plus_dense_svd"]["seconds"] / svd["krylov"]["seconds"],
                                               2),
        "memory_recording_over_two_batch_sr4l": round(memory["sr4l"]["ratio_recording_over_two_batch"], 2),
        "memory_recording_over_two_batch_edsr_mini": round(memory["edsr_mini"]["ratio_recording_over_two_batch"], 2),
        "threads": args.threads,
        "details": result,
        "throughput": throughput_section(args),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

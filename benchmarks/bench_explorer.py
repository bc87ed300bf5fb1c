"""Explorer speed: hover latency (one row + the columns of one pixel) and the neuron-atlas pass.

* hover: ``/api/pixel`` answered by :func:`linearlens.explorer.handle` for random pixels of a cached
  CIFAR-10 image (one frozen forward-and-backward pass for the row, one two-batch pass for the
  pixel's 6 columns, base64 encoding included), p50/p95 in ms of process CPU time and of wall
  time, with 1 and 2 torch threads (the issue's goal: p95 <= 100 ms on 2 cores).  Unless
  ``--browser no`` (or /usr/bin/chromium is missing) also hover-to-paint in headless Chromium
  with 1 torch thread: the page's own ``performance.now()`` from the mouse event to the painted
  canvases, HTTP and JSON decoding included.
* atlas: :meth:`NeuronAtlas.compute` over ``--atlas-images`` images against one plain forward pass
  over the same images in the same batches (1 thread, process CPU time), ratio of the two.

    python benchmarks/bench_explorer.py [--checkpoint runs/demo] [--atlas-images 10000]

Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

from linearlens import create_model
from linearlens.explorer import Explorer, handle, start_background
from linearlens.explorer.atlas import NeuronAtlas, atlas_images

CHROMIUM = Path("/usr/bin/chromium")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def hover_latency(explorer: Explorer, hovers: int) -> dict:
    """p50/p95 of one hover request, in process CPU time and in wall time."""
    rng = random.Random(0)
    handle(explorer, "GET", "/api/pixel", "image=0&y=0&x=0")  # first call: allocator and caches warm up
    cpu, wall = [], []
    for _ in range(hovers):
        y, x = rng.randrange(32), rng.randrange(32)
        c0, w0 = time.process_time(), time.perf_counter()
        r = handle(explorer, "GET", "/api/pixel", f"image=0&y={y}&x={x}")
        cpu.append(1000 * (time.process_time() - c0))
        wall.append(1000 * (time.perf_counter() - w0))
        assert r.status == 200, r.body
    return {"cpu_p50_ms": percentile(cpu, 50), "cpu_p95_ms": percentile(cpu, 95), "wall_p50_ms": percentile(wall, 50),
            "wall_p95_ms": percentile(wall, 95), "wall_mean_ms": statistics.mean(wall), "hovers": hovers}


def browser_latency(explorer: Explorer, hovers: int) -> dict | None:
    if not CHROMIUM.exists():
        return None
    from playwright.sync_api import sync_playwright

    server = start_background(explorer, port=0)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    rng = random.Random(1)
    try:
        import tempfile

        with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
            context = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), args=args,
                                                           headless=True)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/")
            page.wait_for_function("window.linearlens && window.linearlens.ready === true")
            box = page.locator("#input").bounding_box()
            for i in range(hovers + 1):
                y, x = rng.randrange(32), rng.randrange(32)
                page.mouse.move(box["x"] + (x + 0.5) * box["width"] / 32, box["y"] + (y + 0.5) * box["height"] / 32)
                page.wait_for_function(f"window.linearlens.paints > {i}")
            times = page.evaluate("window.linearlens.latencies")[1:]
            context.close()
    finally:
        server.shutdown()
        server.server_close()
    return {"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95), "hovers": len(times)}


def atlas_ratio(model: torch.nn.Module, layer: str, count: int, batch_size: int) -> dict:
    """Atlas pass vs plain forward passes over the same images, timed forward / atlas / forward."""
    images, labels, classes, what = atlas_images("all", count)

    def forward() -> float:
        t0 = time.process_time()
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model(images[start : start + batch_size].float().div_(255))
        return time.process_time() - t0

    with torch.no_grad():
        model(images[:batch_size].float().div_(255))  # warm-up: allocator, kernels
    before = forward()
    t0 = time.process_time()
    atlas = NeuronAtlas.compute(model, layer, (images, labels, classes), batch_size=batch_size)
    pass_time = time.process_time() - t0
    after = forward()
    reference = (before + after) / 2
    return {"images": len(images), "source": what, "layer": layer, "units": int(atlas.values.shape[0]),
            "forward_s": [before, after], "atlas_s": pass_time, "ratio": pass_time / reference}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a run directory (default: random bcos_cifar, width 0.25, MaxOut)")
    parser.add_argument("--hovers", type=int, default=100)
    parser.add_argument("--atlas-images", type=int, default=10000)
    parser.add_argument("--atlas-layer", default="features.7")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--browser", choices=("auto", "no"), default="auto")
    args = parser.parse_args()

    if args.checkpoint:
        from linearlens.training import load_checkpoint

        model, name = load_checkpoint(args.checkpoint), args.checkpoint
    else:
        torch.manual_seed(0)
        model = create_model("bcos_cifar", width=0.25, max_out=2, width_scaled_gamma=True).eval()
        name = "bcos_cifar width 0.25 MaxOut (random weights)"
    images, _, _, _ = atlas_images("embedded", 1)
    result: dict = {"model": name, "load_avg_before": os.getloadavg()[0]}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        explorer = Explorer(model)
        explorer.add_image(images[0].float() / 255, "test #0")
        result[f"hover_{threads}_threads"] = hover_latency(explorer, args.hovers)
        print(f"hover, {threads} thread(s): {result[f'hover_{threads}_threads']}")
    if args.browser == "auto":
        torch.set_num_threads(1)
        explorer = Explorer(model)
        explorer.add_image(images[0].float() / 255, "test #0")
        result["hover_to_paint_browser_1_thread"] = browser_latency(explorer, min(args.hovers, 60))
        print(f"hover to paint in Chromium (wall), 1 torch thread: {result['hover_to_paint_browser_1_thread']}")
    torch.set_num_threads(1)
    result["atlas_1_thread"] = atlas_ratio(model, args.atlas_layer, args.atlas_images, args.batch_size)
    print(f"atlas pass vs one forward pass: {result['atlas_1_thread']}")
    result["goal_p95_le_100ms"] = {f"{t}_threads_wall": result[f"hover_{t}_threads"]["wall_p95_ms"] <= 100
                                   for t in (1, 2)}
    result["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()

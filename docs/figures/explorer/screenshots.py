"""Take the explorer, atlas and report screenshots in headless Chromium (docs/explorer.md).

    python docs/figures/explorer/screenshots.py --checkpoint runs/explorer_demo [--evaluation outputs/ev]

Writes explorer.png, atlas.png, report.png (and report.html) next to this file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from linearlens.explorer import Explorer, start_background
from linearlens.explorer.atlas import NeuronAtlas
from linearlens.explorer.loading import atlas_cache_dir, embedded_examples, load_network
from linearlens.explorer.report import write_report

HERE = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--evaluation", action="append", default=[])
    parser.add_argument("--atlas-layer", default="features.7")
    parser.add_argument("--atlas-images", type=int, default=None)
    parser.add_argument("--image", type=int, default=6, help="which embedded example the explorer shows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, classes, description = load_network(args.checkpoint)
    explorer = Explorer(model, class_names=classes)
    for name, image, label in embedded_examples(2):
        explorer.add_image(image, name, label)
    t0 = time.time()
    explorer.atlas = NeuronAtlas.compute(model, args.atlas_layer, "all", limit=args.atlas_images,
                                         cache_dir=atlas_cache_dir(args.checkpoint, None), progress=True)
    print(f"atlas: {explorer.atlas.meta['images']} in {time.time() - t0:.1f} s")
    server = start_background(explorer, port=0)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(profile, executable_path="/usr/bin/chromium", args=ARGS,
                                                       headless=True, viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        page.wait_for_function("window.linearlens && window.linearlens.ready === true")
        page.select_option("#image-select", str(args.image))
        page.wait_for_function(f"document.getElementById('image-select').value === '{args.image}' && "
                               "document.getElementById('status').textContent.includes('ready')")
        page.click("#residual-button")
        page.wait_for_selector("#residual tr")
        page.click("#svd-button")
        page.wait_for_selector("#svd figure")
        box = page.locator("#input").bounding_box()
        page.mouse.move(box["x"] + 14.5 * box["width"] / 32, box["y"] + 12.5 * box["height"] / 32)
        page.wait_for_function("window.linearlens.paints > 0")
        page.screenshot(path=str(HERE / "explorer.png"), full_page=True)
        page.click("#tab-atlas")
        page.wait_for_selector("#unit-crops figure")
        page.screenshot(path=str(HERE / "atlas.png"), full_page=True)
        explorer.images = explorer.images[::5]
        report = write_report(HERE / "report.html", explorer, title=f"linearlens report: {description}",
                              evaluations=args.evaluation, atlas_units=[0, 1])
        page.goto(report.as_uri())
        page.screenshot(path=str(HERE / "report.png"))
        context.close()
    server.shutdown()
    print(f"wrote {HERE / 'explorer.png'}, {HERE / 'atlas.png'}, {HERE / 'report.png'}")


if __name__ == "__main__":
    main()

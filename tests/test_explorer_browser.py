"""End to end in headless Chromium: the page receives and paints the library's exact rows and columns.

Needs Debian's ``chromium`` at /usr/bin/chromium (installed by ``.ci/run``), driven by Playwright.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from linearlens import LinearScope, create_model, explain
from linearlens.explorer import Explorer, start_background
from linearlens.explorer.probe import LayerOutput

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (bash .ci/run installs it)")

CLASSES = [f"class{i}" for i in range(10)]


@pytest.fixture(scope="module")
def app():
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    model = create_model("bcos_cifar", width=0.125, width_scaled_gamma=True).eval()
    explorer = Explorer(model, class_names=CLASSES)
    for i in range(2):
        explorer.add_image(torch.rand(3, 32, 32), f"random {i}")
    server = start_background(explorer, port=0)
    yield explorer, f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:  # one per thread: every page of this module shares it
        yield p


def open_page(playwright, profile: Path, url: str):
    """A fresh Chromium (own user-data-dir) showing the explorer at ``url``, once the page is ready."""
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True, viewport={"width": 1400, "height": 1000}
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_function("window.linearlens && window.linearlens.ready === true")
    return context, page


@pytest.fixture(scope="module")
def page(app, playwright, tmp_path_factory):
    context, page = open_page(playwright, tmp_path_factory.mktemp("chromium-profile"), app[1])
    yield page
    context.close()


def canvas_colours(page, selector: str) -> tuple[int, int, int]:
    """(width, height, number of distinct colours) of a canvas as drawn."""
    return tuple(page.evaluate(f"""() => {{
        const c = document.querySelector("{selector}");
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4) seen.add(d[i] + "," + d[i + 1] + "," + d[i + 2] + "," + d[i + 3]);
        return [c.width, c.height, seen.size];
    }}"""))


def hover(page, y: int, x: int) -> dict:
    """Move the mouse over input pixel (y, x) and return what the page received for it."""
    before = page.evaluate("window.linearlens.paints")
    box = page.locator("#input").bounding_box()
    page.mouse.move(box["x"] + (x + 0.5) * box["width"] / 32, box["y"] + (y + 0.5) * box["height"] / 32)
    page.wait_for_function(f"window.linearlens.paints > {before} && "
                           f"window.linearlens.lastPixel.column_at.join() === '{y},{x}'")
    return page.evaluate("window.linearlens.lastPixel")


def test_hover_receives_the_exact_row_and_column_and_paints_them(app, page):
    explorer, _ = app
    got = hover(page, 13, 21)
    x = explorer.images[got["image"]].image.unsqueeze(0)
    scope = LinearScope(LayerOutput(explorer.model, explorer.layer), x)
    ch, oy, ox = got["row_at"]
    assert [oy, ox] == [13 * 8 // 32, 21 * 8 // 32]
    row = scope.rows([scope.output_index(ch, oy, ox)])[0, 0]
    column = scope.columns([scope.input_index(c, 13, 21) for c in range(6)])[0]
    assert got["rowShape"] == list(row.shape) and got["columnShape"] == list(column.shape)
    np.testing.assert_array_equal(np.float32(got["row"]), row.flatten().numpy())
    np.testing.assert_array_equal(np.float32(got["column"]), column.flatten().numpy())
    assert canvas_colours(page, "#row")[:2] == (32, 32) and canvas_colours(page, "#row")[2] > 10
    assert canvas_colours(page, "#column")[:2] == (8, 8) and canvas_colours(page, "#column")[2] > 3
    # A second pixel: new arrays, not the cached first ones.
    again = hover(page, 2, 30)
    assert again["row"] != got["row"] and again["column"] != got["column"]


def test_switching_classes_shows_that_class(app, page):
    explorer, _ = app
    page.select_option("#class-select", "7")
    page.wait_for_function("window.linearlens.lastExplanation && window.linearlens.lastExplanation.cls === 7")
    got = np.float32(page.evaluate("window.linearlens.lastExplanation.contributions"))
    image = int(page.eval_on_selector("#image-select", "s => s.value"))
    e = explain(explorer.model, explorer.images[image].image.unsqueeze(0), 7, method="linear_rows")
    np.testing.assert_allclose(got, e.attributions[0, 0].flatten().numpy(), rtol=1e-6, atol=1e-7)
    assert page.locator("#top li.on").count() in (0, 1)
    # The hovered unit follows the class: its channel is now class 7's evidence map.
    assert hover(page, 5, 5)["row_at"][0] == 7


def test_switching_images_and_a_corrupt_upload_shows_the_error_and_the_server_goes_on(app, page):
    page.select_option("#image-select", "1")
    page.wait_for_function("document.getElementById('image-name').textContent.startsWith('random 1')")
    page.set_input_files("#upload", files=[{"name": "../../broken.png", "mimeType": "image/png",
                                            "buffer": b"\x89PNG\r\n\x1a\n this is not a picture"}])
    page.wait_for_selector("#error:not([hidden])")
    assert "broken.png is not a readable image" in page.inner_text("#error")
    info = page.evaluate("fetch('/api/info').then(r => r.json())")
    assert [im["name"] for im in info["images"]] == ["random 0", "random 1"]
    assert hover(page, 1, 1)["image"] == 1


def test_image_to_image_network_hover_on_the_output_shows_its_receptive_filter(playwright, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
    explorer = Explorer(model)
    explorer.add_image(torch.rand(3, 16, 16), "low resolution")
    server = start_background(explorer, port=0)
    try:
        context, page = open_page(playwright, tmp_path / "profile", f"http://127.0.0.1:{server.server_port}/")
        assert page.is_visible("#output") and not page.is_visible("#classes-card")
        box = page.locator("#output").bounding_box()
        page.mouse.move(box["x"] + 21.5 * box["width"] / 32, box["y"] + 9.5 * box["height"] / 32)
        page.wait_for_function("window.linearlens.paints > 0")
        got = page.evaluate("window.linearlens.lastPixel")
        context.close()
    finally:
        server.shutdown()
        server.server_close()
    assert got["row_at"] == [0, 9, 21] and got["column_at"] == [9 // 2, 21 // 2]
    scope = LinearScope(model, explorer.images[0].image.unsqueeze(0))
    row = scope.rows([scope.output_index(0, 9, 21)])[0, 0]
    np.testing.assert_array_equal(np.float32(got["row"]), row.flatten().numpy())

"""The explorer's API handlers without a browser: exact rows/columns, errors, uploads, atlas, report."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from linearlens import LinearScope, Neuron, create_model, explain
from linearlens.explorer import Explorer, handle, start_background
from linearlens.explorer.api import safe_name
from linearlens.explorer.atlas import NeuronAtlas
from linearlens.explorer.probe import LayerOutput

CLASSES = [f"c{i}" for i in range(10)]


def floats(a: dict) -> torch.Tensor:
    """Decode an array the way the page does (base64 little-endian float32)."""
    data = np.frombuffer(base64.b64decode(a["data"]), dtype="<f4")
    return torch.from_numpy(data.copy()).reshape(a["shape"])


def png_bytes(h: int = 32, w: int = 32, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return create_model("bcos_cifar", width=0.125, width_scaled_gamma=True).double().eval()


@pytest.fixture
def explorer(classifier, single_thread):
    ex = Explorer(classifier, class_names=CLASSES)
    ex.add_image(torch.rand(3, 32, 32), "a")
    ex.add_image(torch.rand(3, 32, 32), "b")
    return ex


class SuperResolution(nn.Module):
    """A small image-to-image network: conv, ReLU, conv, PixelShuffle(2) (the SR demo's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                                  nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


def get(ex, path, **params):
    r = handle(ex, "GET", path, "&".join(f"{k}={v}" for k, v in params.items()))
    return r.status, r.json()


def test_summary_shows_sigmoid_scores_and_top_classes(explorer, classifier):
    status, s = get(explorer, "/api/summary", image=1)
    assert status == 200
    out = classifier(explorer.images[1].image.unsqueeze(0))[0].detach()
    torch.testing.assert_close(torch.tensor(s["scores"], dtype=out.dtype), out.sigmoid())
    assert s["top"] == out.argsort(descending=True)[:5].tolist()
    assert s["row_space"] == [6, 32, 32] and s["column_space"] == [10, 8, 8]


def test_pixel_row_and_column_are_the_linear_interpreters(explorer, classifier):
    status, p = get(explorer, "/api/pixel", image=0, y=13, x=21, **{"class": 4})
    assert status == 200
    row, column = floats(p["row"]), floats(p["column"])
    # The unit under the pixel: class 4's evidence map at the layer position of (13, 21).
    assert p["row_at"] == [4, 13 * 8 // 32, 21 * 8 // 32] and p["column_at"] == [13, 21]
    x = explorer.images[0].image.unsqueeze(0)
    ch, oy, ox = p["row_at"]
    expected = explain(classifier, x, Neuron("features.8", (ch, oy, ox)), method="linear_rows").weights[0, 0]
    torch.testing.assert_close(row, expected.float(), rtol=1e-6, atol=1e-9)
    # The same matrix entry seen from both sides: F[unit, (c, pixel)] in the row and in the column.
    torch.testing.assert_close(column[:, ch, oy, ox], row[:, 13, 21], rtol=1e-5, atol=1e-9)
    # Faithfulness of the sub-network's interpreter (random probe): <row, z> + r = y1(z) for that unit.
    scope = LinearScope(LayerOutput(classifier, "features.8"), x)
    z = torch.randn_like(scope.source)
    lhs = (row.double() * z[0]).sum() + scope.residual[0, ch, oy, ox]
    torch.testing.assert_close(lhs, scope.system(z)[0, ch, oy, ox], rtol=1e-6, atol=1e-6)
    cols = scope.columns([scope.input_index(c, 13, 21) for c in range(6)])[0]
    torch.testing.assert_close(column, cols.float(), rtol=1e-6, atol=1e-9)


def test_image_to_image_network_hover_gives_receptive_and_projective_filters(single_thread):
    model = SuperResolution().double().eval()
    ex = Explorer(model)
    ex.add_image(torch.rand(3, 12, 10), "lr")
    status, s = get(ex, "/api/summary", image=0)
    assert status == 200 and ex.kind == "image" and s["column_space"] == [3, 24, 20] and s["output"]
    status, p = get(ex, "/api/pixel", image=0, y=5, x=4, oy=11, ox=9, channel=2)
    row, column = floats(p["row"]), floats(p["column"])
    assert list(row.shape) == [3, 12, 10] and list(column.shape) == [3, 3, 24, 20]
    scope = LinearScope(model, ex.images[0].image.unsqueeze(0))
    torch.testing.assert_close(row.double(), scope.rows([scope.output_index(2, 11, 9)])[0, 0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(column[:, 2, 11, 9], row[:, 5, 4], rtol=1e-5, atol=1e-7)
    # Receptive field of a 2-conv 3x3 network: 5x5 low-resolution pixels around (11 // 2, 9 // 2).
    support = row.abs().sum(0) > 0
    ys, xs = torch.nonzero(support, as_tuple=True)
    assert ys.min() >= 5 - 2 and ys.max() <= 5 + 2 and xs.min() >= 4 - 2 and xs.max() <= 4 + 2
    status, r = get(ex, "/api/residual", image=0)
    assert status == 200 and floats(r["residual"]).shape == (3, 24, 20)


def test_explanation_delta_and_residual_add_up(explorer):
    _, a = get(explorer, "/api/explanation", image=0, **{"class": "c3"})
    _, b = get(explorer, "/api/explanation", image=0, **{"class": 7})
    _, d = get(explorer, "/api/delta", image=0, a=3, b="c7")
    difference = floats(a["contribution_map"]) - floats(b["contribution_map"])
    torch.testing.assert_close(floats(d["contribution_map"]), difference)
    assert d["output"] == pytest.approx(a["output"] - b["output"], abs=1e-6)
    assert a["colour"].startswith("data:image/png;base64,")
    _, r = get(explorer, "/api/residual", image=0, **{"class": 3})
    assert sum(p["value"] for p in r["parts"]) == pytest.approx(r["output"], abs=1e-6)
    assert r["output"] == pytest.approx(a["output"], abs=1e-9)
    _, svd = get(explorer, "/api/svd", image=0, k=2)
    assert len(svd["values"]) == 2 and svd["values"][0] >= svd["values"][1] > 0


@pytest.mark.parametrize(("path", "params", "message"), [
    ("/api/explanation", {"image": 0, "class": "zebra"}, "unknown class 'zebra'"),
    ("/api/explanation", {"image": 0, "class": 12}, "unknown class 12"),
    ("/api/summary", {"image": 9}, "no image 9"),
    ("/api/summary", {"image": "x"}, "must be an integer"),
    ("/api/pixel", {"image": 0, "y": 40, "x": 0}, "outside the 32x32 input"),
    ("/api/pixel", {"image": 0, "x": 0}, "missing parameter 'y'"),
    ("/api/pixel", {"image": 0, "y": 1, "x": 1, "channel": 10}, "out of range"),
    ("/api/svd", {"image": 0, "k": 99}, "k must be between 1 and 16"),
    ("/api/atlas", {}, "no neuron atlas"),
])
def test_bad_requests_are_one_line_errors(explorer, path, params, message):
    status, body = get(explorer, path, **params)
    assert status == 400 and message in body["error"] and "\n" not in body["error"]


def test_uploads_stay_in_memory_and_bad_files_are_refused(explorer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = handle(explorer, "POST", "/api/upload", "name=../../evil%2F..%2Fpwn.png", png_bytes(24, 40))
    assert r.status == 200 and r.json()["name"] == "pwn.png"
    assert explorer.images[-1].image.shape == (3, 24, 40)
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "pwn.png").exists()
    assert safe_name("..\\..\\a b?.png") == "a b_.png" and safe_name("../..") == "upload"
    corrupt = handle(explorer, "POST", "/api/upload", "name=broken.png", b"\x89PNG\r\n\x1a\nnot really")
    assert corrupt.status == 400 and "broken.png is not a readable image" in corrupt.json()["error"]
    huge = handle(explorer, "POST", "/api/upload", "name=big.png", png_bytes(600, 20))
    assert huge.status == 400 and "20x600 pixels" in huge.json()["error"]
    assert len(explorer.images) == 3  # the refused uploads were not added
    assert handle(explorer, "GET", "/static/../api.py").status == 404
    assert b"<canvas" in handle(explorer, "GET", "/").body


class Squares(nn.Module):
    """``x * x`` has no linear interpretation: the engine must refuse it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return (y * y).mean((2, 3))


def test_a_network_the_engine_refuses_is_reported_with_its_message(single_thread):
    model = Squares().eval()
    ex = Explorer(model)
    expected = None
    try:
        LinearScope(LayerOutput(model, "conv"), torch.rand(1, 3, 8, 8)).rows([0])
        explain(model, torch.rand(1, 3, 8, 8), 0, method="linear_rows")
    except Exception as err:  # the engine's own message, whatever its class
        expected = " ".join(str(err).split())
    assert expected, "the engine accepted x * x"
    r = handle(ex, "POST", "/api/upload", "name=a.png", png_bytes(8, 8))
    if r.status == 200:  # the hover layer is linear; the refusal comes with the explanation
        r = handle(ex, "GET", "/api/explanation", "image=0&class=0")
    assert r.status == 400 and r.json()["error"] == expected
    assert handle(ex, "GET", "/api/info").status == 200


def test_server_keeps_serving_after_errors(explorer):
    server = start_background(explorer, port=0)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        request = urllib.request.Request(base + "/api/upload?name=x.png", data=b"garbage", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=10)
        assert err.value.code == 400 and "not a readable image" in json.loads(err.value.read())["error"]
        with urllib.request.urlopen(base + "/api/info", timeout=10) as response:
            assert len(json.loads(response.read())["images"]) == 2
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_atlas_finds_the_top_activations_and_caches_them(classifier, tmp_path, single_thread):
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (37,), generator=gen)
    atlas = NeuronAtlas.compute(classifier, "features.4", (images, labels, CLASSES), top=5, batch_size=8,
                                cache_dir=tmp_path)
    # Brute force: every image's per-unit maximum of the layer's output.
    seen = []
    handle_ = classifier.features[4].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        classifier(images.double() / 255)
    handle_.remove()
    maxima = seen[0].flatten(2).max(2).values  # (N, U)
    top = maxima.T.topk(5, dim=1)
    torch.testing.assert_close(atlas.values, top.values)
    assert torch.equal(atlas.indices, top.indices)
    u, j = 2, 0
    i, (h, w) = int(atlas.indices[u, j]), atlas.positions[u, j].tolist()
    assert seen[0][i, u, h, w] == atlas.values[u, j]
    assert int(atlas.histogram(u).sum()) == 5
    assert torch.equal(atlas.histogram(u), torch.bincount(labels[top.indices[u]], minlength=10))
    again = NeuronAtlas.compute(classifier, "features.4", (images, labels, CLASSES), top=5, cache_dir=tmp_path)
    assert again.meta["cached"] and torch.equal(again.indices, atlas.indices)
    assert len(list(tmp_path.glob("atlas-*.safetensors"))) == 1
    crops = atlas.crops(classifier, u, count=2)
    top_, left, side = crops[0]["box"]
    assert 0 <= top_ and top_ + side <= 32 and 0 <= left and left + side <= 32
    assert crops[0]["image"].shape == crops[0]["explanation"].shape[:2] + (3,) == (side, side, 3)
    e = explain(classifier, images[i : i + 1].double() / 255, Neuron("features.4", (u, h, w)), method="linear_rows")
    assert float(e.outputs[0, 0]) == pytest.approx(float(atlas.values[u, j]), rel=1e-9)
    with pytest.raises(ValueError, match="no layer called 'nope'"):
        NeuronAtlas.compute(classifier, "nope", (images, labels, CLASSES))

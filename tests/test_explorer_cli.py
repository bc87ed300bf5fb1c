"""``linearlens serve`` and ``linearlens report`` from the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from linearlens import create_model
from linearlens.cli import main
from linearlens.training import save_model

MODEL_ARGS = {"width": 0.125, "width_scaled_gamma": True}


def checkpoint(tmp_path):
    run = tmp_path / "run"
    save_model(run, create_model("bcos_cifar", **MODEL_ARGS).eval(), "bcos_cifar", MODEL_ARGS, {})
    return run


def test_report_is_one_self_contained_file_with_evaluation_tables(tmp_path, single_thread):
    run = checkpoint(tmp_path)
    ev = tmp_path / "ev"
    assert main(["evaluate", "--checkpoint", str(run), "--methods", "bcos,gradient", "--grids", "2",
                 "--limit-per-class", "2", "--include-misclassified", "--no-progress", "--threads", "1",
                 "--out", str(ev)]) == 0
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 28, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    out = tmp_path / "report.html"
    assert main(["report", str(run), str(tmp_path / "p.png"), "--evaluation", str(ev), "--out", str(out),
                 "--top", "2"]) == 0
    text = out.read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<script" not in text and "<link" not in text and "url(" not in text
    assert "p.png (28x40)" in text and "Δ" in text and "logits" in text
    results = json.loads((ev / "results.json").read_text())
    assert f"{results['methods']['bcos']['mean']:.4g}" in text and "box plot" in text


def test_report_and_serve_errors_are_one_line(tmp_path, capsys):
    run = checkpoint(tmp_path)
    (tmp_path / "x.png").write_bytes(b"no image here")
    assert main(["report", str(run), str(tmp_path / "x.png"), "--out", str(tmp_path / "r.html")]) == 2
    assert "x.png is not a readable image" in capsys.readouterr().err
    assert main(["report", str(run), "--evaluation", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "has no results.json" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "is neither a run directory" in capsys.readouterr().err
    assert main(["serve", str(run), "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err


def test_serve_starts_on_a_free_port_on_localhost(tmp_path):
    run = checkpoint(tmp_path)
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    process = subprocess.Popen([sys.executable, "-m", "linearlens.cli", "serve", str(run), str(tmp_path / "black.png"),
                                "--port", "0", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", lines[1])
        assert match, lines + [process.stderr.read() if process.poll() is not None else ""]
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/api/info", timeout=30) as response:
            info = json.loads(response.read())
        assert info["kind"] == "classifier" and info["images"][0]["name"] == "black.png"
        assert info["classes"][0] == "airplane"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_image_to_image_networks_load_from_a_python_factory(tmp_path):
    from linearlens.explorer.loading import load_network

    (tmp_path / "nets.py").write_text(
        "import torch\n"
        "def upscaler(scale, channels=4):\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU(),\n"
        "                               torch.nn.Conv2d(channels, 3 * scale ** 2, 3, padding=1),\n"
        "                               torch.nn.PixelShuffle(scale))\n"
    )
    model, classes, _ = load_network(f"{tmp_path / 'nets.py'}:upscaler(2, channels=5)")
    assert classes is None and model[0].out_channels == 5 and model(torch.rand(1, 3, 6, 6)).shape == (1, 3, 12, 12)
    torch.save({"state_dict": model.state_dict(), "info": {}}, tmp_path / "w.pt")
    again, _, description = load_network(f"{tmp_path / 'nets.py'}:upscaler(2, channels=5)={tmp_path / 'w.pt'}")
    assert torch.equal(again[0].weight, model[0].weight) and "w.pt" in description
    for bad, message in (("nets.py:upscaler(", "expected a factory name"), ("nets.py:nothing", "has no function")):
        with pytest.raises(ValueError, match=message):
            load_network(f"{tmp_path}/{bad}")

"""Static explanation figures: a readable grid for any number of classes, images of any size, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from linearlens import create_model, explain
from linearlens.cli import main
from linearlens.cli.explain import write_explanations
from linearlens.explain.visualize import explanation_panels, save_explanation_grid
from linearlens.training import save_model

MODEL_ARGS = {"width": 0.125, "width_scaled_gamma": True}


@pytest.fixture
def model():
    return create_model("bcos_cifar", **MODEL_ARGS).eval()


def test_ten_classes_wrap_into_rows_instead_of_a_strip(tmp_path, model, single_thread):
    x = torch.rand(2, 3, 32, 32)
    e = explain(model, x, "all")
    path = save_explanation_grid(tmp_path / "g.png", x, e)
    width, height = Image.open(path).size
    # 2 images x ceil(10 / 4) rows, 1 + 2 * 4 columns of 1.6 x 1.75 inches at 120 dpi.
    assert (width, height) == (round(9 * 1.6 * 120), round(6 * 1.75 * 120))
    groups = explanation_panels(e, 1, [f"c{i}" for i in range(10)])
    assert [name for name, _ in groups] == [f"c{i}" for i in range(10)]
    assert all(len(p) == 2 and p[0][0].shape == (32, 32, 4) and p[1][0].shape == (32, 32, 3) for _, p in groups)


def test_images_of_different_sizes_are_each_explained_at_their_own_size(tmp_path, model, single_thread):
    a, b, c = torch.rand(3, 32, 32), torch.rand(3, 40, 24), torch.rand(3, 32, 32)
    seen = []
    import linearlens.cli.explain as cli_explain

    real = cli_explain.save_explanation_grid

    def spy(path, images, explanations, **kw):
        seen.extend(explanations)
        return real(path, images, explanations, **kw)

    cli_explain.save_explanation_grid = spy
    try:
        write_explanations(model, [a, b, c], tmp_path, torch.tensor([1, 2, 3]), "bcos")
    finally:
        cli_explain.save_explanation_grid = real
    assert [tuple(e.attributions.shape) for e in seen] == [(1, 1, 32, 32), (1, 1, 40, 24), (1, 1, 32, 32)]
    # Per-image targets follow their images through the grouping by size.
    assert [int(e.targets[0, 0]) for e in seen] == [1, 2, 3]
    alone = explain(model, b.unsqueeze(0), 2)
    torch.testing.assert_close(seen[1].attributions, alone.attributions)


def test_cli_explains_mixed_sizes_and_rejects_a_non_image_in_one_line(tmp_path, model, capsys):
    run = tmp_path / "run"
    save_model(run, model, "bcos_cifar", MODEL_ARGS, {})
    for name, size in (("a.png", (32, 32)), ("b.png", (48, 36))):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    code = main(["explain", "--checkpoint", str(run), "--image", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                 "--target", "all", "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "explanations.png").is_file()
    (tmp_path / "notes.png").write_text("this is not an image")
    capsys.readouterr()
    assert main(["explain", "--checkpoint", str(run), "--image", str(tmp_path / "notes.png")]) == 2
    err = capsys.readouterr().err
    assert "notes.png is not a readable image" in err and "Traceback" not in err and err.count("\n") == 1

"""``linearlens evaluate``: JSON table, box plot, checkpoints and clear errors (tiny models, few grids)."""

from __future__ import annotations

import json

import pytest
import torch

from linearlens import create_model
from linearlens.cli import main
from linearlens.metrics.evaluation import build_grids, grid_pointing_scores
from linearlens.training import save_model

ARGS = {"width": 0.125}


def test_grid_pointing_table_and_box_plot(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main([
        "evaluate", "--model", "bcos_cifar", "--model-args", json.dumps(ARGS), "--limit-per-class", "3",
        "--include-misclassified", "--grids", "2", "--methods", "bcos,ixg,rise,lrp", "--option", "rise.n_masks=20",
        "--out", str(out), "--no-progress", "--threads", "1",
    ])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "grid-pointing" and results["settings"]["grids"] == 2
    assert results["settings"]["options"]["rise"] == {"n_masks": 20}
    for method in ("bcos", "ixg", "rise"):
        row = results["methods"][method]
        assert 0 <= row["mean"] <= 1 and row["n"] == 2 * 9
    assert "BcosConv2d" in results["methods"]["lrp"]["error"]  # reported, not fatal
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["bcos"]) == 2 and len(scores["bcos"][0]) == 9
    assert (out / "boxplot.png").stat().st_size > 1000
    assert "--grids 2" in results["command"] and "rise.n_masks=20" in results["command"]
    assert "skipped" in capsys.readouterr().out


def test_evaluates_a_saved_checkpoint_with_the_degradation_metric(tmp_path):
    torch.manual_seed(0)
    model = create_model("bcos_cifar", **ARGS)
    save_model(tmp_path / "run", model, "bcos_cifar", ARGS, {})
    out = tmp_path / "deg"
    code = main([
        "evaluate", "--checkpoint", str(tmp_path / "run"), "--metric", "degradation", "--images", "4",
        "--limit-per-class", "1", "--methods", "bcos,gradcam", "--steps", "5", "--out", str(out), "--no-progress",
    ])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["methods"]["bcos"]["mean_curve"]) == 5
    assert "random order" in results["methods"]  # the reference ordering
    assert results["model"] == str(tmp_path / "run")


def test_harness_matches_a_direct_metric_call():
    # The harness must only feed the metric: scores equal explain + grid_pointing_game by hand.
    from linearlens import explain
    from linearlens.data import load_cifar10
    from linearlens.metrics import grid_pointing_game

    torch.manual_seed(1)
    model = create_model("bcos_cifar", **ARGS).eval()
    data = load_cifar10("embedded", "test", 2)
    grids, _ = build_grids(model, data.images, data.labels, n=2, num_grids=2, require_correct=False)
    scores, _ = grid_pointing_scores(model, grids, "ixg", smooth_kernel=3, batch_size=1, progress=False)
    e = explain(model, grids.images, grids.classes, method="ixg")
    direct = grid_pointing_game(e.attributions, 2, torch.arange(4).expand(2, 4), smooth_kernel=3)
    assert torch.allclose(scores, direct, atol=1e-5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "bcos,nope"], "unknown method"),
        (["--methods", "bcos", "--option", "rise.n_masks=3"], "not in --methods"),
        (["--methods", "bcos", "--option", "bcos"], "method.key=value"),
        ([], "--checkpoint"),
    ],
)
def test_clear_errors(tmp_path, capsys, argv, message):
    base = ["evaluate", "--out", str(tmp_path), "--no-progress"]
    if argv:
        base += ["--model", "bcos_cifar"]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err

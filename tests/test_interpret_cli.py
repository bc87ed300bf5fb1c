"""``linearlens interpret`` end to end (slow: a full-width CIFAR B-cos network on 10 images)."""

from __future__ import annotations

import json

import pytest

from linearlens.cli import main


@pytest.mark.slow
def test_interpret_command_writes_figures_and_summary(tmp_path):
    code = main(["interpret", "--model", "bcos_cifar", "--per-class", "1", "--indices", "0", "1",
                 "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 10
    assert summary["decomposition_max_abs_error"] < 1e-3
    assert set(summary["contributions_top1_mean"]) == {"input", "logits", "other"}
    assert (tmp_path / "contributions.png").stat().st_size > 0
    assert (tmp_path / "pixel_votes.png").stat().st_size > 0


def test_interpret_command_rejects_unknown_models(capsys):
    assert main(["interpret", "--model", "no_such_model", "--out", "unused"]) == 2
    assert "unknown model" in capsys.readouterr().err

"""The command line: the main job end to end on a sliver of the embedded data, and its errors."""

from __future__ import annotations

from linearlens.cli import main


def test_demo_trains_reports_accuracy_and_writes_pngs(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main([
        "demo", "--epochs", "1", "--train-per-class", "4", "--test-per-class", "2", "--width", "0.125",
        "--images", "3", "--out", str(out), "--quiet",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed
    pngs = sorted(p.name for p in (out / "explanations").glob("*.png"))
    assert pngs == ["predicted_class.png", "true_class.png"]
    assert all((out / "explanations" / p).stat().st_size > 1000 for p in pngs)


def test_explain_writes_png_for_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert main([
        "train", "--epochs", "1", "--train-per-class", "2", "--test-per-class", "1", "--width", "0.125",
        "--out", str(run), "--quiet",
    ]) == 0
    assert main(["explain", "--checkpoint", str(run), "--indices", "0", "5", "--target", "all",
                 "--out", str(tmp_path / "exp")]) == 0
    assert (tmp_path / "exp" / "explanations.png").is_file()


def test_errors_are_one_line_messages_not_tracebacks(tmp_path, capsys):
    assert main(["explain", "--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "does not exist" in err and "Traceback" not in err
    assert main(["train", "--epochs", "0", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err

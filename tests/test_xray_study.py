"""The chest X-ray study pipeline end to end at toy size on the embedded subset, and its CLI errors."""

from __future__ import annotations

import json

import pytest
import torch

from linearlens.cli import main
from linearlens.xray.config import preset
from linearlens.xray.evaluation import classify
from linearlens.xray.report import write_report
from linearlens.xray.study import run_study


def test_study_end_to_end_on_the_embedded_subset(tmp_path, single_thread):
    config = preset("quick", variants=("baseline", "flc"), ablation_variants=("flc",), epg_min_auroc=0.0,
                    panels=1, n_boot=100, aux_epochs=1)
    report = run_study(config, progress=False)
    paths = write_report(report, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved["images"] == 40 and saved["classes"] == ["Lung Opacity"] and len(saved["folds"]) == 2
    assert sum(f["test"] for f in saved["folds"]) == 40
    assert set(saved["main"]) == {"baseline", "flc"}
    assert set(saved["epg"]) == {"baseline/layercam", "baseline/gradcam", "flc/inherent", "flc/layercam",
                                 "flc/gradcam"}
    inherent = saved["epg"]["flc/inherent"]
    # every RSNA-positive test image has a box: 24 positives, each tested once over the folds
    assert inherent["epg_all"]["n"] == 24 and inherent["epg_tp"]["n"] + inherent["epg_fn"]["n"] == 24
    assert 0 < inherent["epg_all"]["chance"] < 1 and 0 <= inherent["epg_all"]["mean"] <= 1
    assert len(inherent["sweep"]["epg"]) == len(config.sweep)
    assert 0 <= inherent["maps_without_positive_energy"] <= 24
    assert [p["a"] for p in saved["paired"]] == []  # no strided reference in this run
    assert len(saved["ablation"]) == 4 and {(a["augment"], a["oversample"]) for a in saved["ablation"]} == {
        (False, False), (False, True), (True, False), (True, True)}
    assert (tmp_path / "index.html").read_text().count("<img") >= 2  # sweep + a panel
    assert list((tmp_path / "panels").glob("*.png"))


def test_epg_is_withheld_below_the_auroc_bar():
    config = preset("quick", variants=("flc",), ablation=False, epg_min_auroc=1.01, panels=0, aux_epochs=0,
                    run_folds=(1,))
    report = run_study(config, progress=False)
    entry = report["epg"]["flc/inherent"]
    assert "epg_all" not in entry and "AUROC" in entry["note"] and entry["withheld"][0].startswith("fold 1 ")
    assert [r["fold"] for r in report["runs"]] == [1]
    assert "artifact_all_folds" in entry  # the artifact score measures maps whatever the accuracy


def test_multilabel_study_scores_every_finding_with_boxes(single_thread):
    config = preset("quick", task="nih", variants=("strided",), ablation=False, epg_min_auroc=0.0, panels=1,
                    n_boot=50)
    report = run_study(config, progress=False)
    assert report["classes"] == ["Atelectasis", "Infiltration", "Pneumonia", "Edema"]  # >= 7 positives of 48
    per_class = report["runs"][0]["macro"]
    assert set(per_class) >= {"auroc", "f1", "specificity"}
    # NIH boxes among these findings: 23 pneumonia + 1 infiltration, each image tested once over the folds
    assert report["epg"]["strided/inherent"]["epg_all"]["n"] == 24


def test_classify_applies_per_finding_thresholds():
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.5], [-2.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    probs = torch.sigmoid(logits)
    thresholds = torch.tensor([0.45, 0.7])  # finding 0: 0.88, 0.5 positive; finding 1: only 0.95 positive
    report = classify(logits, labels, thresholds, ["a", "b"])
    assert report["per_class"]["a"]["recall"] == 1.0 and report["per_class"]["b"]["recall"] == 0.5
    assert report["per_class"]["b"]["specificity"] == 1.0
    assert report["threshold"] == {"a": pytest.approx(0.45), "b": pytest.approx(0.7)}
    assert probs[1, 1] < 0.7 <= probs[2, 1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["xray", "--preset", "paper"], "none is available here"),
        (["xray", "--data", "/nonexistent/folder"], "not found"),
        (["xray", "--folds", "1", "--data", "embedded"], "folds >= 2"),
        (["xray", "--data", "embedded", "--pretrained", "flc"], "VARIANT=FILE"),
        (["xray", "--data", "embedded", "--pretrained", "vit=w.pt"], "unknown variants"),
        (["xray", "--data", "embedded", "--fold", "7"], "run_folds must lie"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    if argv[2:3] == ["paper"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.slow
def test_cli_quick_run(tmp_path):
    assert main(["xray", "--quick", "--quiet", "--min-auroc", "0", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "index.html").is_file() and (tmp_path / "report.json").is_file()

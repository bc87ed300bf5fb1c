"""Multi-label classification: multi-hot targets, thresholded predictions, per-class/macro metrics, BCE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from linearlens.metrics import classification_report, explain_labels, multi_hot, predicted_labels
from linearlens.training import bce_loss


def test_multi_hot_from_indices_lists_and_tensors():
    assert multi_hot(torch.tensor([2, 0]), 3).tolist() == [[0, 0, 1], [1, 0, 0]]
    assert multi_hot([[0, 2], [], [1]], 3).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    given_hot = torch.tensor([[1, 0], [1, 1]])
    assert torch.equal(multi_hot(given_hot, 2), given_hot.float())
    with pytest.raises(ValueError, match="outside 0..2"):
        multi_hot([[3]], 3)
    with pytest.raises(ValueError, match="only 0 and 1"):
        multi_hot(torch.tensor([[0.5, 1.0]]), 2)
    with pytest.raises(ValueError, match="columns"):
        multi_hot(torch.zeros(2, 4), 3)


def test_predicted_labels_threshold_in_probability():
    logits = torch.tensor([[0.0, -0.1, 2.0], [math.log(0.3 / 0.7), -5.0, 0.1]])
    assert predicted_labels(logits).tolist() == [[True, False, True], [False, False, True]]
    assert predicted_labels(logits, 0.3).tolist() == [[True, True, True], [True, False, True]]
    for bad in (0.0, 1.0, -1, "0.5"):
        with pytest.raises(ValueError, match="threshold"):
            predicted_labels(logits, bad)
    with pytest.raises(ValueError, match="shape"):
        predicted_labels(torch.zeros(3), 0.5)


def _reference(y: np.ndarray, p: np.ndarray, s: np.ndarray) -> dict:
    """Per-class metrics computed independently, from the definitions."""
    out = {}
    for c in range(y.shape[1]):
        tp = int(((p[:, c] == 1) & (y[:, c] == 1)).sum())
        fp = int(((p[:, c] == 1) & (y[:, c] == 0)).sum())
        fn = int(((p[:, c] == 0) & (y[:, c] == 1)).sum())
        tn = int(((p[:, c] == 0) & (y[:, c] == 0)).sum())
        pos, neg = s[y[:, c] == 1, c], s[y[:, c] == 0, c]
        # AUROC as the Mann-Whitney probability that a positive outscores a negative (ties count 1/2).
        auroc = (np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]) if len(pos) and len(neg)
                 else float("nan"))
        out[c] = {
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
            "accuracy": (tp + tn) / len(y),
            "auroc": auroc,
        }
    return out


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 30),
    k=st.integers(1, 5),
    threshold=st.floats(0.05, 0.95),
    seed=st.integers(0, 10_000),
)
def test_report_matches_definitions(n, k, threshold, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g).round(decimals=1)  # ties exercise AUROC's tie handling
    targets = (torch.rand(n, k, generator=g) < 0.4).float()
    report = classification_report(logits, targets, threshold)
    p = (torch.sigmoid(logits.double()) >= threshold).numpy().astype(int)
    expected = _reference(targets.numpy().astype(int), p, logits.numpy())
    for c in range(k):
        got = report["per_class"][str(c)]
        for key, value in expected[c].items():
            if math.isnan(value):
                assert math.isnan(got[key]), (key, got)
            else:
                assert got[key] == pytest.approx(value, abs=1e-9), (key, c)
    aurocs = [expected[c]["auroc"] for c in range(k) if not math.isnan(expected[c]["auroc"])]
    if aurocs:
        assert report["macro"]["auroc"] == pytest.approx(np.mean(aurocs))
    assert report["macro"]["auroc_classes"] == len(aurocs)
    assert report["macro"]["f1"] == pytest.approx(np.mean([expected[c]["f1"] for c in range(k)]))
    assert report["subset_accuracy"] == pytest.approx(float((p == targets.numpy()).all(1).mean()))


def test_report_names_classes_and_rejects_mismatches():
    logits = torch.tensor([[2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]])
    targets = torch.tensor([[1, 0], [0, 1], [1, 0]])
    report = classification_report(logits, targets, 0.5, ["effusion", "nodule"])
    assert report["per_class"]["effusion"]["auroc"] == 1.0
    assert report["per_class"]["nodule"]["precision"] == 0.5 and report["per_class"]["nodule"]["recall"] == 1.0
    assert report["threshold"] == 0.5 and report["num_samples"] == 3
    with pytest.raises(ValueError, match="rows"):
        classification_report(logits, targets[:2])
    with pytest.raises(ValueError, match="class names"):
        classification_report(logits, targets, 0.5, ["one"])


def test_bce_accepts_multi_hot_targets_and_equals_one_hot_for_single_labels():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, 1, 1])
    assert torch.allclose(bce_loss(logits, labels), bce_loss(logits, F.one_hot(labels, 3).float()))
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    expected = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(bce_loss(logits, targets), expected)
    with pytest.raises(ValueError, match="multi-hot targets of shape"):
        bce_loss(logits, targets[:, :2])


def test_explain_labels_gives_maps_for_every_output_and_the_thresholded_predictions(tiny_net):
    model = tiny_net(classes=4, bias=-0.5).eval()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    explanation, predicted = explain_labels(model, x, threshold=0.4)
    assert explanation.attributions.shape == (3, 4, 8, 8)
    assert torch.equal(predicted, torch.sigmoid(model(x)) >= 0.4)
    # The contribution maps sum to each logit minus the logit bias (f(x) = W(x) x + b).
    torch.testing.assert_close(explanation.attributions.sum((2, 3)) + model.logits.bias, model(x))

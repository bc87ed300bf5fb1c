"""Decision thresholds on validation data: Youden's J and max-F1 against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linearlens.xray.thresholds import choose_thresholds


def brute(y: np.ndarray, s: np.ndarray, rule: str) -> float:
    best, best_t = -np.inf, None
    for t in sorted(set(s.tolist()), reverse=True):  # highest threshold first: ties keep the highest
        p = s >= t
        tp, fp = (p & (y == 1)).sum(), (p & (y == 0)).sum()
        fn, tn = (~p & (y == 1)).sum(), (~p & (y == 0)).sum()
        if rule == "youden":
            value = tp / (tp + fn) - fp / (fp + tn)
        else:
            value = 2 * tp / (2 * tp + fp + fn)
        if value > best + 1e-12:
            best, best_t = value, t
    return best_t


@settings(max_examples=100, deadline=None)
@given(data=st.data(), rule=st.sampled_from(["youden", "f1"]))
def test_thresholds_maximise_the_criterion(data, rule):
    n = data.draw(st.integers(4, 30))
    y = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    s = np.array(data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))) / 20.0
    if y.min() == y.max():
        y[0] = 1 - y[0]
    got = choose_thresholds(y, s, rule).thresholds.item()
    assert got == pytest.approx(brute(y, s, rule))


def test_ties_rounded_differently_go_to_the_highest_threshold():
    # F1 = 2/3 at both thresholds (3 TP, 1 FP, 2 FN vs 5 TP, 5 FP, 0 FN), computed with different rounding
    y = np.array([0, 0, 0, 0, 1, 1, 0, 1, 1, 1])
    s = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1]) * 0.05
    assert choose_thresholds(y, s, "f1").thresholds.item() == 0.05


def test_separable_scores_and_fallback():
    y = np.array([[0, 1], [0, 1], [1, 1], [1, 1]])
    s = np.array([[0.1, 0.3], [0.2, 0.4], [0.7, 0.5], [0.9, 0.6]])
    choice = choose_thresholds(y, s)
    assert choice.thresholds[0].item() == 0.7 and choice.fallback_classes == (1,)
    assert choice.thresholds[1].item() == 0.5
    with pytest.raises(ValueError, match="rule must be one of"):
        choose_thresholds(y, s, "accuracy")
    with pytest.raises(ValueError, match="labels must be 0/1"):
        choose_thresholds(y * 2, s)

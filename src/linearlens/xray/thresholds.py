"""Decision thresholds chosen on validation data (the study reports metrics and EPG TP/FN at them).

Per finding, over the validation images' scores (probabilities or logits, any monotone score):

``"youden"`` (default)
    maximises Youden's J = sensitivity + specificity - 1 = TPR - FPR over the observed scores as
    thresholds (scikit-learn ``roc_curve``); ties go to the highest threshold (the most specific optimum).
``"f1"``
    maximises F1 = 2 PR / (P + R) over the precision-recall curve's thresholds (``precision_recall_curve``).

A finding whose validation images are all positive or all negative has no ROC curve; it gets
``fallback`` (0.5 for probabilities) and is listed in :attr:`ThresholdChoice.fallback_classes`.
A sample is predicted positive when its score is ``>=`` the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve, roc_curve
from torch import Tensor

__all__ = ["RULES", "ThresholdChoice", "choose_thresholds"]

RULES = ("youden", "f1")


@dataclass(frozen=True)
class ThresholdChoice:
    """Per-finding thresholds ``(K,)``, the rule used and the findings that fell back to ``fallback``."""

    thresholds: Tensor
    rule: str
    fallback_classes: tuple[int, ...]


def _one(y: np.ndarray, s: np.ndarray, rule: str) -> float:
    if rule == "youden":
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # the first point (threshold +inf) predicts nothing
        j = tpr - fpr
        return float(thr[np.flatnonzero(j >= j.max() - 1e-12)[0]])  # highest threshold among (rounded) ties
    precision, recall, thr = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)  # equal F1 computed two ways can differ in the last bit
    return float(thr[best[-1]])  # thresholds ascend here: the last maximum is the highest threshold


def choose_thresholds(
    labels: Tensor | np.ndarray, scores: Tensor | np.ndarray, rule: str = "youden", fallback: float = 0.5
) -> ThresholdChoice:
    """Thresholds per finding from validation ``labels`` and ``scores``, both ``(N, K)`` (or ``(N,)``)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    y = np.asarray(torch.as_tensor(labels).detach().cpu(), dtype=np.float64)
    s = np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64)
    y, s = (y[:, None], s[:, None]) if y.ndim == 1 else (y, s)
    if y.shape != s.shape or y.ndim != 2 or len(y) == 0:
        raise ValueError(f"labels and scores must be equal (N, K) arrays with N > 0, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all() or not np.isfinite(s).all():
        raise ValueError("labels must be 0/1 and scores finite")
    out, fallen = [], []
    for k in range(y.shape[1]):
        if y[:, k].min() == y[:, k].max():
            out.append(fallback)
            fallen.append(k)
        else:
            out.append(_one(y[:, k], s[:, k], rule))
    return ThresholdChoice(torch.tensor(out, dtype=torch.float64), rule, tuple(fallen))

"""Multi-label classification: multi-hot targets, thresholded predictions, per-class and macro metrics.

A multi-label B-cos classifier (chest X-ray paper, Sec. 3.1: one sigmoid output per finding, trained
with BCE as in Eq. (16) of the B-cos paper) predicts every class whose probability ``sigmoid(logit)``
reaches a threshold.  :func:`classification_report` scores such predictions per class and as macro
averages: AUROC (threshold-free, :func:`sklearn.metrics.roc_auc_score`), and at the reported threshold
F1 (:func:`sklearn.metrics.f1_score`, per class as a binary problem), precision, recall, specificity and
accuracy, plus the exact-match (subset) accuracy.  :func:`explain_labels` returns the contribution
maps of every output together with the thresholded predictions, in one call.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["multi_hot", "predicted_labels", "classification_report", "explain_labels"]


def multi_hot(labels: Tensor | Sequence[Sequence[int]], num_classes: int) -> Tensor:
    """``(N, K)`` float multi-hot targets from class indices ``(N,)`` or per-sample lists of indices.

    An ``(N, K)`` tensor of 0/1 values is returned as float unchanged.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(labels, Tensor) and labels.dim() == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(f"multi-hot targets have {labels.shape[1]} columns, expected {num_classes}")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError("multi-hot targets must contain only 0 and 1")
        return labels.float()
    if isinstance(labels, Tensor):
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"class indices must be an integer tensor of shape (N,), got {tuple(labels.shape)}")
        rows = [[int(v)] for v in labels]
    else:
        rows = [list(r) for r in labels]
    out = torch.zeros(len(rows), num_classes)
    for i, row in enumerate(rows):
        for c in row:
            if not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
                raise ValueError(f"sample {i}: class index {c!r} is outside 0..{num_classes - 1}")
            out[i, c] = 1.0
    return out


def _check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise ValueError(f"threshold must be a probability strictly between 0 and 1, got {threshold!r}")
    return float(threshold)


def predicted_labels(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Boolean ``(N, K)`` predictions ``sigmoid(logits) >= threshold`` (``logit >= log(t / (1 - t))``)."""
    threshold = _check_threshold(threshold)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape (N, K)")
    return logits >= math.log(threshold / (1 - threshold))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def classification_report(
    logits: Tensor, targets: Tensor, threshold: float = 0.5, class_names: Sequence[str] | None = None
) -> dict:
    """Per-class and macro metrics of multi-label ``logits`` ``(N, K)`` against multi-hot ``targets``.

    Returns ``{"threshold", "num_samples", "per_class": {name: {...}}, "macro": {...}, "subset_accuracy"}``
    with ``auroc, f1, precision, recall, specificity, accuracy, positives`` per class.  AUROC is NaN
    for a class whose targets are all equal (undefined), and precision/recall/specificity NaN where
    their denominator is 0; macro averages skip NaNs and say how many classes they averaged.
    """
    from sklearn.metrics import f1_score, roc_auc_score

    threshold = _check_threshold(threshold)
    preds = predicted_labels(logits, threshold)
    targets = multi_hot(targets, logits.shape[1])
    if targets.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} rows of logits but {targets.shape[0]} rows of targets")
    k = logits.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} outputs")
    y = targets.numpy().astype(int)
    p = preds.numpy().astype(int)
    scores = logits.detach().double().numpy()
    # Column by column: sklearn reads a one-column indicator matrix as a binary vector with labels {0, 1}.
    f1 = np.array([f1_score(y[:, c], p[:, c], zero_division=0) for c in range(k)], dtype=float)
    tp = (p & y).sum(0)
    fp = (p & (1 - y)).sum(0)
    fn = ((1 - p) & y).sum(0)
    tn = ((1 - p) & (1 - y)).sum(0)
    precision, recall, specificity = _ratio(tp, tp + fp), _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    accuracy = (tp + tn) / max(len(y), 1)
    auroc = np.full(k, np.nan)
    for c in range(k):
        if 0 < y[:, c].sum() < len(y):
            auroc[c] = roc_auc_score(y[:, c], scores[:, c])
    per_class = {
        names[c]: {
            "auroc": float(auroc[c]), "f1": float(f1[c]), "precision": float(precision[c]),
            "recall": float(recall[c]), "specificity": float(specificity[c]), "accuracy": float(accuracy[c]),
            "positives": int(y[:, c].sum()),
        }
        for c in range(k)
    }
    macro: dict[str, float | int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns average to NaN, as they should
        for key, values in (("auroc", auroc), ("f1", f1), ("precision", precision), ("recall", recall),
                            ("specificity", specificity), ("accuracy", accuracy)):
            macro[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    macro["auroc_classes"] = int(np.isfinite(auroc).sum())
    return {
        "threshold": threshold,
        "num_samples": len(y),
        "per_class": per_class,
        "macro": macro,
        "subset_accuracy": float((p == y).all(1).mean()) if len(y) else float("nan"),
    }


def explain_labels(model: nn.Module, x: Tensor, threshold: float = 0.5, method: str = "bcos", **options):
    """Contribution maps of every output and the thresholded predictions, in one call.

    Returns ``(explanation, predicted)``: the :class:`~linearlens.explain.Explanation` for target
    ``"all"`` (maps ``(N, K, H, W)``, one forward pass and one backward pass per output) and the
    boolean ``(N, K)`` :func:`predicted_labels` of its outputs, so that the maps of the predicted
    findings are ``explanation.attributions[predicted]``.
    """
    from ..explain import explain

    threshold = _check_threshold(threshold)
    explanation = explain(model, x, "all", method=method, **options)
    return explanation, predicted_labels(explanation.outputs, threshold)

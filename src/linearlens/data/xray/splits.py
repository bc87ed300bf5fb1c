"""Patient-level k-fold cross-validation (Sec. 4.1 of the chest X-ray paper: five folds, 20 % test).

Radiographs of one patient are strongly correlated (follow-ups), so folds are drawn over *patients*: no
patient has images in two folds, and within a fold the training, validation and test images come from
disjoint patients.  Folds are stratified where possible with scikit-learn's ``StratifiedGroupKFold``: each
image is keyed by its rarest positive finding (or "none"), which for a binary task is the label itself and
for a multi-label task keeps every finding represented in each fold as far as the patients allow.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold
from torch import Tensor

__all__ = ["PatientFold", "stratification_key", "patient_folds", "cross_validation"]


@dataclass(frozen=True)
class PatientFold:
    """Image indices of one cross-validation fold: test = this fold's patients, the rest split train/val."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stratification_key(labels: Tensor | np.ndarray) -> np.ndarray:
    """Per image the index of its rarest positive class (by count over all images), ``K`` for no finding."""
    y = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels) > 0.5
    if y.ndim != 2:
        raise ValueError(f"labels must be a multi-hot (N, K) array, got shape {y.shape}")
    counts = y.sum(0)
    key = np.full(len(y), y.shape[1], dtype=np.int64)
    rank = np.where(y, counts[None, :], np.iinfo(np.int64).max)
    has = y.any(1)
    key[has] = rank[has].argmin(1)
    return key


def _group_split(keys: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    folds = np.empty(len(keys), dtype=np.int64)
    if np.bincount(keys).max() < k:
        # No stratum has k images (scikit-learn refuses to stratify then): plain patient-grouped folds.
        keys = np.zeros_like(keys)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer than n_splits members": stratification is then best effort
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, test) in enumerate(splitter.split(np.zeros(len(keys)), keys, groups)):
            folds[test] = fold
    return folds


def patient_folds(patient_ids: Sequence[str], labels: Tensor | np.ndarray, k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index in ``[0, k)`` of every image; all images of a patient share one fold."""
    groups = np.asarray([str(p) for p in patient_ids])
    keys = stratification_key(labels)
    if len(groups) != len(keys):
        raise ValueError(f"{len(groups)} patient ids for {len(keys)} label rows")
    patients = len(np.unique(groups))
    if k < 2 or patients < k:
        raise ValueError(f"{k}-fold cross-validation needs k >= 2 and at least k patients, got {patients} patients")
    return _group_split(keys, groups, k, seed)


def cross_validation(
    patient_ids: Sequence[str], labels: Tensor | np.ndarray, k: int = 5, val_fraction: float = 0.2, seed: int = 0
) -> list[PatientFold]:
    """The ``k`` folds, each with its validation patients carved from its training patients.

    The validation part (for choosing the decision threshold and the scheduler's plateau) is one of
    ``round(1 / val_fraction)`` patient-stratified parts of the fold's training images.
    """
    if not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    labels_np = np.asarray(labels.detach().cpu() if isinstance(labels, Tensor) else labels)
    groups = np.asarray([str(p) for p in patient_ids])
    folds = patient_folds(groups, labels_np, k, seed)
    parts = round(1 / val_fraction)
    result = []
    for fold in range(k):
        test = np.nonzero(folds == fold)[0]
        rest = np.nonzero(folds != fold)[0]
        if len(np.unique(groups[rest])) < parts:
            raise ValueError(f"fold {fold}: too few training patients to hold out a validation part")
        inner = _group_split(stratification_key(labels_np[rest]), groups[rest], parts, seed + 1 + fold)
        result.append(PatientFold(fold, rest[inner != 0], rest[inner == 0], test))
    return result


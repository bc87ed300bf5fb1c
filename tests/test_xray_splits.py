"""Patient-level cross-validation: no patient in two folds, disjoint train/val/test, stratification."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linearlens.data.xray import load_xray_subset
from linearlens.data.xray.splits import cross_validation, patient_folds, stratification_key


@settings(max_examples=40, deadline=None)
@given(
    patients=st.lists(st.integers(0, 30), min_size=12, max_size=80),
    seed=st.integers(0, 1000),
    k=st.integers(2, 5),
    data=st.data(),
)
def test_no_patient_in_two_folds(patients, seed, k, data):
    if len(set(patients)) < k:
        with pytest.raises(ValueError, match="at least k patients"):
            patient_folds([str(p) for p in patients], np.zeros((len(patients), 1)), k, seed)
        return
    labels = np.array(data.draw(st.lists(st.lists(st.integers(0, 1), min_size=3, max_size=3),
                                         min_size=len(patients), max_size=len(patients))))
    folds = patient_folds([str(p) for p in patients], labels, k, seed)
    assert folds.shape == (len(patients),) and set(folds.tolist()) <= set(range(k))
    for p in set(patients):
        assert len({folds[i] for i, q in enumerate(patients) if q == p}) == 1


def test_cross_validation_on_the_real_subset():
    data = load_xray_subset("embedded", "nih")
    folds = cross_validation(data.patient_ids, data.labels, k=4, seed=3)
    patients = np.array(data.patient_ids)
    test_all = np.concatenate([f.test for f in folds])
    assert sorted(test_all.tolist()) == list(range(len(data)))  # every image tested exactly once
    for f in folds:
        parts = [set(patients[f.train]), set(patients[f.val]), set(patients[f.test])]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert len(f.train) + len(f.val) + len(f.test) == len(data) and len(f.val) > 0
    a = cross_validation(data.patient_ids, data.labels, k=4, seed=3)
    assert all(np.array_equal(x.train, y.train) and np.array_equal(x.val, y.val) for x, y in zip(a, folds))


def test_binary_folds_are_stratified():
    data = load_xray_subset("embedded", "rsna")
    folds = patient_folds(data.patient_ids, data.labels, k=4, seed=0)
    y = data.labels[:, 0].numpy()
    rate = y.mean()
    for f in range(4):
        assert abs(y[folds == f].mean() - rate) < 0.2  # 40 images, 24 positive: each fold near 60 %


def test_stratification_key_is_rarest_positive_class():
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    # counts: class 0 -> 3, class 1 -> 1, class 2 -> 2
    assert stratification_key(labels).tolist() == [2, 0, 3, 1]


def test_folds_when_no_stratum_has_k_images():
    """Every finding rarer than k images (scikit-learn cannot stratify): still k patient-grouped folds."""
    patients = [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    labels = np.array([[0, 0, 0]] * 4 + [[0, 0, 1]] * 4 + [[0, 1, 0]] * 3 + [[1, 0, 0]])
    folds = patient_folds([str(p) for p in patients], labels, 5, 0)
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    assert len({folds[i] for i, p in enumerate(patients) if p == 0}) == 1

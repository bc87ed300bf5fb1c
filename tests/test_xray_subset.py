"""The real NIH subset: the embedded copy loads without ../shared and equals the shared files when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from linearlens.data.xray import subset as subset_module
from linearlens.data.xray.subset import SHARED_SUBSET, load_xray_subset, read_subset_table

REPO = Path(__file__).resolve().parents[1]


def test_embedded_subset_loads_without_shared_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ../shared is now relative to an empty folder
    monkeypatch.setattr(subset_module, "SHARED_SUBSET", tmp_path / "absent")
    subset_module._embedded_table.cache_clear()
    rsna = load_xray_subset("embedded", "rsna")
    nih = load_xray_subset("embedded", "nih")
    assert len(nih) == 48 and len(rsna) == 40 and rsna.images.shape[1:] == (1, 128, 128)
    assert int(rsna.labels.sum()) == 24
    # every RSNA positive has at least one box, no negative has one
    for label, boxes in zip(rsna.labels[:, 0], rsna.boxes):
        assert (len(boxes) > 0) == bool(label)
    assert sum(len(b) > 0 for b in nih.boxes) == 24
    for boxes, labels, row in zip(nih.boxes, nih.box_labels, nih.labels):
        assert bool((boxes[:, 2:] > boxes[:, :2]).all()) and bool(((boxes >= 0) & (boxes <= 128)).all())
        assert all(row[labels] == 1)  # boxes only for findings the image is labelled with
    with pytest.raises(FileNotFoundError, match="source='embedded'"):
        load_xray_subset(tmp_path / "absent", "rsna")
    with pytest.raises(ValueError, match="task must be one of"):
        load_xray_subset("embedded", "vindr")


def test_embedded_resize_scales_boxes():
    small = load_xray_subset("embedded", "rsna", size=64)
    full = load_xray_subset("embedded", "rsna")
    assert small.images.shape[-1] == 64
    for a, b in zip(small.boxes, full.boxes):
        torch.testing.assert_close(a, b / 2)


@pytest.mark.skipif(not (REPO / SHARED_SUBSET).is_dir(), reason="../shared/data not present")
def test_embedded_subset_equals_shared_files(monkeypatch):
    monkeypatch.chdir(REPO)
    shared = read_subset_table(SHARED_SUBSET, size=128)
    embedded = subset_module._embedded_table()
    index = {name: i for i, name in enumerate(shared.image_ids)}
    rows = np.array([index[name] for name in embedded.image_ids])
    np.testing.assert_array_equal(embedded.images, shared.images[rows])
    np.testing.assert_array_equal(embedded.patient_ids, shared.patient_ids[rows])
    np.testing.assert_array_equal(embedded.nih_labels, shared.nih_labels[rows])
    np.testing.assert_array_equal(embedded.rsna_target, shared.rsna_target[rows])
    assert len(embedded.box_image) == np.isin(shared.box_image, rows).sum()

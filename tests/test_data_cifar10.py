"""Tests for the CIFAR-10 data layer (linearlens.data)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linearlens.data import (
    CIFAR10_CLASSES,
    AugmentedImageDataset,
    ImageSet,
    augment_batch,
    load_cifar10,
)

SHARED_CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def _write_image(path: Path, color: tuple[int, int, int], size: int = 32) -> np.ndarray:
    """Write a small image whose top-left quadrant is ``color`` (rest black); return its HWC pixels."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[: size // 2, : size // 2] = color
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _make_tree(root: Path) -> Path:
    """A tiny ImageFolder tree: PNGs in train (3 cat, 2 dog, 1 airplane), one JPEG per class in test."""
    for name, count in (("cat", 3), ("dog", 2), ("airplane", 1)):
        for i in range(count):
            _write_image(root / "train" / name / f"{i:04d}.png", (10 * i + 5, 100, 200))
    for name in ("cat", "dog"):
        _write_image(root / "test" / name / "0000.jpg", (250, 0, 0))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return root


def _write_batches(
    root: Path, n_train: int = 20, n_test: int = 10, protocol: int = 2
) -> dict[str, np.ndarray]:
    """A fake official python-batches folder with random pixels; returns what was written."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, np.ndarray] = {}
    for name, n in (("data_batch_1", n_train), ("data_batch_2", n_train), ("test_batch", n_test)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": b"fake", b"data": data, b"labels": labels, b"filenames": []},
                        f, protocol=protocol)
        written[name + "_data"], written[name + "_labels"] = data, np.array(labels)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, f,
                    protocol=protocol)
    return written


# ---------------------------------------------------------------------------------------------------------
# embedded subset


@pytest.mark.parametrize(("split", "n"), [("train", 10000), ("test", 1000)])
def test_embedded_loads_balanced(split: str, n: int) -> None:
    s = load_cifar10("embedded", split)
    assert len(s) == n
    assert s.images.shape == (n, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.labels.dtype == torch.int64
    assert s.classes == list(CIFAR10_CLASSES) == sorted(CIFAR10_CLASSES)
    assert torch.bincount(s.labels, minlength=10).tolist() == [n // 10] * 10
    assert torch.all(s.labels[:-1] <= s.labels[1:])  # ordered by class
    x = s.to_float()
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert float(x.std()) > 0.1  # real images, not blank


def test_embedded_limit_per_class_and_cache_isolation() -> None:
    full = load_cifar10("embedded", "test")
    s = load_cifar10("embedded", "test", limit_per_class=3)
    assert len(s) == 30 and torch.bincount(s.labels).tolist() == [3] * 10
    assert torch.equal(s.images[:3], full.images[:3])  # first images of class 0
    assert torch.equal(s.images[3:6], full.images[100:103])  # first images of class 1
    s.images.zero_()  # results are copies: the cached decode is unaffected
    assert torch.equal(load_cifar10("embedded", "test").images, full.images)
    with pytest.warns(UserWarning, match="fewer images"):
        assert len(load_cifar10("embedded", "test", limit_per_class=101)) == 1000


def test_embedded_matches_shared_files() -> None:
    if not SHARED_CIFAR10.is_dir():
        pytest.skip(f"shared data not present at {SHARED_CIFAR10}")
    for split, per_class in (("train", 1000), ("test", 100)):
        emb = load_cifar10("embedded", split)
        shared = load_cifar10(SHARED_CIFAR10, split, limit_per_class=per_class)
        assert torch.equal(emb.labels, shared.labels)
        assert torch.equal(emb.images, shared.images)
    # spot check against an independent decode of one file
    ref = np.asarray(Image.open(SHARED_CIFAR10 / "train" / "cat" / "0007.jpg").convert("RGB"))
    emb = load_cifar10("embedded", "train")
    idx = CIFAR10_CLASSES.index("cat") * 1000 + 7
    assert np.array_equal(emb.images[idx].permute(1, 2, 0).numpy(), ref)


# ---------------------------------------------------------------------------------------------------------
# ImageFolder and python batches


def test_imagefolder_labels_and_order(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "tree")
    s = load_cifar10(str(root), "train")
    assert s.classes == list(CIFAR10_CLASSES)
    # classes in sorted order (airplane, cat, dog), files in name order; labels index CIFAR10_CLASSES
    assert s.labels.tolist() == [0, 3, 3, 3, 5, 5]
    assert s.images.shape == (6, 3, 32, 32)
    # PNG is lossless: pixels come back exactly
    assert s.images[2, :, 0, 0].tolist() == [15, 100, 200]  # cat/0001.png
    assert int(s.images[2, :, 20, 20].sum()) == 0
    limited = load_cifar10(root, "train", limit_per_class=1)
    assert limited.labels.tolist() == [0, 3, 5]
    test = load_cifar10(root, "test")
    assert test.labels.tolist() == [3, 5]
    assert abs(int(test.images[0, 0, 2, 2]) - 250) <= 3  # JPEG: close, not exact


def test_python_batches(tmp_path: Path) -> None:
    written = _write_batches(tmp_path / "cifar-10-batches-py")
    train = load_cifar10(tmp_path / "cifar-10-batches-py", "train")
    assert len(train) == 40 and train.classes == list(CIFAR10_CLASSES)
    expected = np.concatenate([written["data_batch_1_data"], written["data_batch_2_data"]])
    assert np.array_equal(train.images.numpy(), expected.reshape(-1, 3, 32, 32))
    assert train.labels.tolist() == written["data_batch_1_labels"].tolist() + written[
        "data_batch_2_labels"].tolist()
    # the parent of the extracted folder is found too
    test = load_cifar10(tmp_path, "test")
    assert np.array_equal(test.images.numpy(), written["test_batch_data"].reshape(-1, 3, 32, 32))
    limited = load_cifar10(tmp_path, "train", limit_per_class=1)
    labels = written["data_batch_1_labels"].tolist() + written["data_batch_2_labels"].tolist()
    first = sorted({labels.index(c) for c in set(labels)})  # first occurrence of each class, file order
    assert np.array_equal(limited.images.numpy(), expected.reshape(-1, 3, 32, 32)[first])


def test_python_batches_protocol5_and_malicious_pickle(tmp_path: Path) -> None:
    _write_batches(tmp_path / "p5", protocol=5)
    assert len(load_cifar10(tmp_path / "p5", "test")) == 10
    bad = tmp_path / "bad"
    bad.mkdir()

    class Evil:
        def __reduce__(self):  # would call os.system on a plain pickle.load
            return (__import__("os").system, ("echo pwned",))

    with open(bad / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing to load global"):
        load_cifar10(bad, "test")


# ---------------------------------------------------------------------------------------------------------
# errors


def test_error_messages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_cifar10("embedded", "val")
    with pytest.raises(FileNotFoundError, match=r"does not exist.*\.\./shared/data/cifar10"):
        load_cifar10(tmp_path / "nowhere", "train")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no known format.*ImageFolder tree.*data_batch_1"):
        load_cifar10(tmp_path / "junk", "train")
    with pytest.raises(ValueError, match="is a file"):
        load_cifar10(tmp_path / "junk" / "a.txt", "train")
    with pytest.raises(ValueError, match="limit_per_class"):
        load_cifar10("embedded", "train", limit_per_class=0)

    root = _make_tree(tmp_path / "tree")
    with pytest.raises(ValueError, match="pass its parent"):
        load_cifar10(root / "train", "train")
    (root / "test" / "frog").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*frog.* contains no images"):
        load_cifar10(root, "test")
    (root / "train" / "unicorn").mkdir()
    with pytest.raises(ValueError, match="not CIFAR-10 classes.*unicorn"):
        load_cifar10(root, "train")

    only_train = tmp_path / "only_train"
    _write_image(only_train / "train" / "cat" / "0.png", (1, 2, 3))
    with pytest.raises(FileNotFoundError, match="no 'test' folder"):
        load_cifar10(only_train, "test")
    _write_image(only_train / "train" / "cat" / "1.png", (1, 2, 3), size=16)
    with pytest.raises(ValueError, match="same size"):
        load_cifar10(only_train, "train")
    (only_train / "train" / "cat" / "1.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot decode"):
        load_cifar10(only_train, "train")

    batches = tmp_path / "batches"
    _write_batches(batches)
    (batches / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="no test files"):
        load_cifar10(batches, "test")


# ---------------------------------------------------------------------------------------------------------
# ImageSet


def test_imageset_subset_and_validation() -> None:
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    s = ImageSet(images, torch.tensor([0, 1, 2, 1]), ["a", "b", "c"])
    sub = s.subset([3, 0])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 0] and torch.equal(sub.images[1], images[0])
    assert s.subset(np.array([True, False, True, False])).labels.tolist() == [0, 2]
    assert len(s.subset(slice(1, 3))) == 2 and len(s.subset([])) == 0
    assert torch.allclose(s.to_float(), images.float() / 255)
    assert "4x3x2x2" in repr(s)
    with pytest.raises(ValueError, match="labels must lie"):
        ImageSet(images, torch.tensor([0, 1, 2, 3]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.float(), torch.tensor([0, 1, 2, 1]), ["a", "b", "c"])


# ---------------------------------------------------------------------------------------------------------
# augmentation


def _batch(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_flip_is_exact_mirror() -> None:
    x = _batch()
    y = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    same = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert torch.all(flipped ^ same)
    assert 10 < int(flipped.sum()) < 54
    assert torch.equal(augment_batch(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_crop_is_a_window_of_the_padded_image(mode: str) -> None:
    x = _batch(32)
    y = augment_batch(x, torch.Generator().manual_seed(3), flip=False, padding_mode=mode)
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="constant" if mode == "zeros" else "reflect")
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(y[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert hits, f"image {i} is not a crop of its padded input"
        offsets.add(hits[0])
    assert len(offsets) > 5


def test_flip_and_crop_combined_and_deterministic() -> None:
    x = _batch(16)
    a = augment_batch(x, torch.Generator().manual_seed(7))
    b = augment_batch(x, torch.Generator().manual_seed(7))
    c = augment_batch(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)
    with pytest.raises(ValueError, match="padding_mode"):
        augment_batch(x, padding_mode="circular")


def test_augmented_dataset() -> None:
    s = load_cifar10("embedded", "test", limit_per_class=2)
    plain = AugmentedImageDataset(s, train=False)
    img, label = plain[5]
    assert len(plain) == 20 and isinstance(label, int) and label == int(s.labels[5])
    assert torch.equal(img, s.images[5].float() / 255)
    aug = AugmentedImageDataset(s, train=True, generator=torch.Generator().manual_seed(0))
    again = AugmentedImageDataset(s, train=True, generator=torch.Generator().manual_seed(0))
    outs = [aug[5][0] for _ in range(8)]
    assert all(o.shape == (3, 32, 32) and o.dtype == torch.float32 for o in outs)
    assert all(0.0 <= float(o.min()) and float(o.max()) <= 1.0 for o in outs)
    assert any(not torch.equal(o, img) for o in outs)
    assert all(torch.equal(o, again[5][0]) for o in outs)
    loader = torch.utils.data.DataLoader(plain, batch_size=8)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 3, 32, 32) and yb.dtype == torch.int64

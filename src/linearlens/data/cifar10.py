"""CIFAR-10 loading and augmentation.

Three on-disk sources give the same :class:`ImageSet` (uint8 ``N x 3 x 32 x 32`` images, int64 labels,
``classes`` always equal to :data:`CIFAR10_CLASSES`, the sorted CIFAR-10 class names, which is also the
official label order):

``"embedded"``
    ``linearlens/_embedded/cifar10_subset.npz``, shipped inside the package: the first 1,000 training and the
    first 100 test images of every class of the JPEG copy in ``../shared/data/cifar10`` (10,000 / 1,000
    images), stored as the original JPEG bytes. See ``_embedded/README.md`` and
    ``scripts/make_embedded_cifar10.py``.
an ImageFolder tree
    ``<root>/{train,test}/<class>/*.jpg|*.jpeg|*.png``, e.g. ``../shared/data/cifar10`` (the full JPEG copy:
    30,000 training and 10,000 test images). Files are taken in sorted file-name order within a class,
    classes in sorted order.
the official python batches
    the extracted ``cifar-10-python.tar.gz``: ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
    ``batches.meta``, which are *pickled* dicts. Pickle is accepted here only because it is the official
    distribution format; the files are read with ``pickle``'s ``encoding="bytes"`` through an unpickler
    that only resolves the few numpy globals an array needs, so a tampered file cannot run code.
    Images keep the order of the batch files.

JPEG and PNG files are decoded with Pillow, serially: on the 2-core reference machine a thread pool made
decoding of 32x32 images 2x *slower* (the per-image work is too small to amortise GIL hand-offs).

Augmentation (:func:`augment_batch`, :class:`AugmentedImageDataset`) is the standard CIFAR recipe: random
horizontal flip (p = 0.5) and a random ``H x W`` crop of the image padded by 4 pixels on every side, by
default with zeros (as ``torchvision.transforms.RandomCrop(32, padding=4)``); ``padding_mode="reflect"``
mirrors the border instead.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

__all__ = [
    "CIFAR10_CLASSES",
    "AugmentedImageDataset",
    "ImageSet",
    "augment_batch",
    "load_cifar10",
]

#: The ten CIFAR-10 class names, sorted; label ``i`` means ``CIFAR10_CLASSES[i]`` in every source.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
EMBEDDED_FILE = "cifar10_subset.npz"
SHARED_DATA_HINT = (
    "the full CIFAR-10 JPEG copy lives in ../shared/data/cifar10 relative to the project root (not part of "
    "the repository); source='embedded' loads the 10,000/1,000-image subset shipped with the package"
)
PADDING_MODES = ("zeros", "reflect")

PathLike = Union[str, "os.PathLike[str]"]
Indices = Union[Sequence[int], np.ndarray, torch.Tensor, slice]


# --------------------------------------------------------------------------------------------------------
# ImageSet


@dataclass(repr=False)
class ImageSet:
    """A labelled set of images held in memory.

    Attributes:
        images: uint8 tensor ``N x C x H x W`` (``C = 3``, RGB, for CIFAR-10).
        labels: int64 tensor ``N``; ``labels[i]`` indexes ``classes``.
        classes: class names; for CIFAR-10 always :data:`CIFAR10_CLASSES`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor N x C x H x W, got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be a 1-D int64 tensor, got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.classes = list(self.classes)
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape)
        return f"ImageSet({shape} uint8, {len(self.classes)} classes)"

    def subset(self, indices: Indices) -> ImageSet:
        """Return a new :class:`ImageSet` with the selected images (a copy, except for a slice).

        Args:
            indices: integer indices (list, range, numpy array or tensor), a boolean mask, or a slice.
        """
        if not isinstance(indices, slice):
            indices = torch.as_tensor(np.asarray(indices) if isinstance(indices, range) else indices)
            if indices.dtype != torch.bool:
                if indices.is_floating_point() and indices.numel() > 0:
                    raise TypeError(f"indices must be integers or booleans, got {indices.dtype}")
                indices = indices.long()
        return ImageSet(self.images[indices], self.labels[indices], list(self.classes))

    def to_float(self) -> torch.Tensor:
        """Images as a float32 tensor ``N x C x H x W`` with values in ``[0, 1]`` (``uint8 / 255``)."""
        return self.images.float().div_(255.0)


# --------------------------------------------------------------------------------------------------------
# loading


def load_cifar10(
    source: PathLike = "embedded",
    split: str = "train",
    limit_per_class: int | None = None,
) -> ImageSet:
    """Load a split of CIFAR-10 as an :class:`ImageSet`.

    Args:
        source: ``"embedded"`` for the subset shipped in the package (10,000 train / 1,000 test images), or a
            directory that is auto-detected as an ImageFolder tree (``<root>/{train,test}/<class>/*.jpg``,
            like ``../shared/data/cifar10``) or as the official python batches folder (``data_batch_1..5``,
            ``test_batch``, ``batches.meta``; a ``cifar-10-batches-py`` sub-folder is also found).
        split: ``"train"`` or ``"test"``.
        limit_per_class: if given, keep only the first ``n`` images of every class (in the source's order,
            so the choice is deterministic). A :class:`UserWarning` is issued when a class present in the
            source has fewer than ``n``.

    Returns:
        The images (uint8 ``N x 3 x 32 x 32``), labels (int64) and ``classes == list(CIFAR10_CLASSES)``.

    Raises:
        ValueError: unknown ``split``, bad ``limit_per_class``, a directory in neither format, an unknown
            class folder, a class folder without images, or an undecodable / inconsistent file.
        FileNotFoundError: ``source`` or the requested split does not exist.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    if limit_per_class is not None:
        if isinstance(limit_per_class, bool) or not isinstance(limit_per_class, (int, np.integer)):
            raise ValueError(f"limit_per_class must be a positive int or None, got {limit_per_class!r}")
        if limit_per_class < 1:
            raise ValueError(f"limit_per_class must be >= 1, got {limit_per_class}")
        limit_per_class = int(limit_per_class)

    if isinstance(source, str) and source == "embedded":
        images, labels = _load_embedded(split, limit_per_class)
    else:
        kind, root = _detect_format(Path(source))
        if kind == "imagefolder":
            images, labels = _load_imagefolder(root, split, limit_per_class)
        else:
            images, labels = _load_python_batches(root, split, limit_per_class)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), list(CIFAR10_CLASSES))


def _detect_format(root: Path) -> tuple[str, Path]:
    """Return ``("imagefolder" | "batches", directory)`` for a user-supplied path, or raise."""
    if not root.exists():
        raise FileNotFoundError(f"CIFAR-10 source {str(root)!r} does not exist; {SHARED_DATA_HINT}")
    expected = (
        "expected either an ImageFolder tree (<root>/train/<class>/*.jpg|*.png and <root>/test/<class>/...) "
        "or the official CIFAR-10 python batches folder (data_batch_1 ... data_batch_5, test_batch, "
        "batches.meta, as extracted from cifar-10-python.tar.gz)"
    )
    if not root.is_dir():
        raise ValueError(f"CIFAR-10 source {str(root)!r} is a file, not a directory: {expected}")
    if any((root / s).is_dir() for s in SPLITS):
        return "imagefolder", root
    batch_names = ("data_batch_1", "test_batch", "batches.meta")
    for candidate in (root, root / "cifar-10-batches-py"):
        if any((candidate / name).is_file() for name in batch_names):
            return "batches", candidate
    hint = ""
    if any((root / c).is_dir() for c in CIFAR10_CLASSES):
        hint = f" ({str(root)!r} holds class folders: pass its parent, which holds train/ and test/)"
    raise ValueError(f"CIFAR-10 source {str(root)!r} is in no known format{hint}: {expected}")


def _first_per_class(labels: np.ndarray, limit: int | None, where: str) -> np.ndarray:
    """Indices (ascending) of the first ``limit`` items of every class; all indices when ``limit`` is None."""
    if limit is None:
        return np.arange(len(labels))
    keep = np.zeros(len(labels), dtype=bool)
    short: list[str] = []
    for c in range(len(CIFAR10_CLASSES)):
        idx = np.flatnonzero(labels == c)
        if 0 < len(idx) < limit:
            short.append(f"{CIFAR10_CLASSES[c]}={len(idx)}")
        keep[idx[:limit]] = True
    if short:
        warnings.warn(f"limit_per_class={limit} but {where} has fewer images for: {', '.join(short)}",
                      UserWarning, stacklevel=4)
    return np.flatnonzero(keep)


def _decode(blobs: Sequence[bytes], names: Sequence[str]) -> np.ndarray:
    """Decode encoded images (JPEG/PNG bytes) with Pillow into a uint8 array ``N x 3 x H x W``."""
    out: np.ndarray | None = None
    for i, (blob, name) in enumerate(zip(blobs, names)):
        try:
            with Image.open(io.BytesIO(blob), formats=("JPEG", "PNG")) as im:
                if im.mode != "RGB":
                    im = im.convert("RGB")
                arr = np.asarray(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ValueError(f"cannot decode image {name}: {exc}") from exc
        if out is None:
            out = np.empty((len(blobs), *arr.shape), dtype=np.uint8)
        elif arr.shape != out.shape[1:]:
            raise ValueError(f"image {name} is {arr.shape[1]}x{arr.shape[0]}, but the first image is "
                             f"{out.shape[2]}x{out.shape[1]}; all images must have the same size")
        out[i] = arr
    if out is None:
        return np.empty((0, 3, 32, 32), dtype=np.uint8)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


# ---- embedded npz


@cache
def _embedded_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Decoded embedded images and labels of one split (cached; treat as read-only)."""
    ref = resources.files("linearlens") / "_embedded" / EMBEDDED_FILE
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise FileNotFoundError(
                f"embedded CIFAR-10 subset missing at {path}; rebuild it with "
                f"scripts/make_embedded_cifar10.py ({SHARED_DATA_HINT})"
            )
        with np.load(path, allow_pickle=False) as npz:
            classes = tuple(str(c) for c in npz["classes"])
            raw = npz[f"{split}_jpeg"].tobytes()
            offsets = npz[f"{split}_offsets"]
            labels = npz[f"{split}_labels"].astype(np.int64)
            files = [str(f) for f in npz[f"{split}_files"]]
    if classes != CIFAR10_CLASSES:
        raise ValueError(f"embedded CIFAR-10 subset has classes {classes}, expected {CIFAR10_CLASSES}")
    blobs = [raw[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
    images = _decode(blobs, [f"embedded:{split}/{f}" for f in files])
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _load_embedded(split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _embedded_split(split)
    keep = _first_per_class(labels, limit, f"the embedded {split} split")
    return images[keep], labels[keep]  # fancy indexing copies: the cache stays untouched


# ---- ImageFolder tree


def _load_imagefolder(root: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"ImageFolder tree {str(root)!r} has no {split!r} folder "
                                f"(expected {str(split_dir)!r} with one sub-folder per class)")
    class_dirs = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{str(split_dir)!r} has no class folders (expected {split_dir}/<class>/*.jpg, "
                         f"<class> one of {', '.join(CIFAR10_CLASSES)})")
    unknown = [c for c in class_dirs if c not in CIFAR10_CLASSES]
    if unknown:
        raise ValueError(f"{str(split_dir)!r} has folders that are not CIFAR-10 classes: {unknown}; "
                         f"expected a subset of {list(CIFAR10_CLASSES)}")
    paths: list[str] = []
    labels: list[int] = []
    short: list[str] = []
    for name in class_dirs:
        class_dir = split_dir / name
        files = sorted(
            e.name for e in os.scandir(class_dir)
            if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) and not e.name.startswith(".")
        )
        if not files:
            raise ValueError(f"class folder {str(class_dir)!r} contains no images "
                             f"(expected files ending in {', '.join(IMAGE_SUFFIXES)})")
        if limit is not None:
            if len(files) < limit:
                short.append(f"{name}={len(files)}")
            files = files[:limit]
        paths.extend(str(class_dir / f) for f in files)
        labels.extend([CIFAR10_CLASSES.index(name)] * len(files))
    if short:
        warnings.warn(f"limit_per_class={limit} but {str(split_dir)!r} has fewer images for: "
                      f"{', '.join(short)}", UserWarning, stacklevel=3)
    blobs = [Path(p).read_bytes() for p in paths]
    return _decode(blobs, paths), np.asarray(labels, dtype=np.int64)


# ---- official python batches (pickle)


def _numpy_reconstruct_globals() -> dict[tuple[str, str], object]:
    """The globals a pickled numpy array may reference (old and new numpy module paths)."""
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles of bytes written by python 3
    }
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = _reconstruct
        allowed[(f"{prefix}.numeric", "_frombuffer")] = _frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batch files: plain containers and numpy arrays, nothing else."""

    _allowed = _numpy_reconstruct_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: a CIFAR-10 batch holds only lists and numpy arrays"
            ) from None


def _unpickle(path: Path) -> dict:
    """Read one official CIFAR-10 batch file (a pickled dict with bytes keys)."""
    with open(path, "rb") as f:
        try:
            obj = _BatchUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"cannot read CIFAR-10 batch file {str(path)!r}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"CIFAR-10 batch file {str(path)!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def _load_python_batches(root: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if split == "train":
        files = [root / f"data_batch_{i}" for i in range(1, 6) if (root / f"data_batch_{i}").is_file()]
    else:
        files = [root / "test_batch"] if (root / "test_batch").is_file() else []
    if not files:
        want = "data_batch_1 ... data_batch_5" if split == "train" else "test_batch"
        raise FileNotFoundError(f"CIFAR-10 python batches folder {str(root)!r} has no {split} files "
                                f"(expected {want})")

    # Map the file's label order to CIFAR10_CLASSES (they coincide for the official files).
    label_map = np.arange(len(CIFAR10_CLASSES))
    meta_path = root / "batches.meta"
    if meta_path.is_file():
        names = [n.decode("ascii") if isinstance(n, bytes) else str(n)
                 for n in _unpickle(meta_path).get(b"label_names", [])]
        if sorted(names) != sorted(CIFAR10_CLASSES):
            raise ValueError(f"{str(meta_path)!r} lists label_names {names}, expected the CIFAR-10 classes")
        label_map = np.array([CIFAR10_CLASSES.index(n) for n in names])

    all_images: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    for path in files:
        batch = _unpickle(path)
        if b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"CIFAR-10 batch file {str(path)!r} lacks b'data' or b'labels' "
                             f"(keys: {sorted(batch)})")
        data = np.asarray(batch[b"data"])
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{str(path)!r}: b'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
        if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
            raise ValueError(f"{str(path)!r}: b'labels' must be {data.shape[0]} ints in [0, 9]")
        all_images.append(data.reshape(-1, 3, 32, 32))  # rows are R(1024) G(1024) B(1024), row-major
        all_labels.append(label_map[labels])
    images = np.concatenate(all_images)
    labels = np.concatenate(all_labels).astype(np.int64)
    keep = _first_per_class(labels, limit, f"{str(root)!r} ({split})")
    return np.ascontiguousarray(images[keep]), labels[keep]


# --------------------------------------------------------------------------------------------------------
# augmentation


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    pad: int = 4,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Random horizontal flip + padded random crop of a whole batch, vectorised.

    Every image is independently mirrored left-right with probability 0.5 (if ``flip``), padded by ``pad``
    pixels on each side (zeros, or mirrored border with ``padding_mode="reflect"``) and cropped back to
    ``H x W`` at a uniformly random offset in ``[0, 2 * pad]`` on each axis. Flip and crop are fused into a
    single pair of ``gather`` calls (flipping a symmetrically padded image commutes with padding), so the
    cost is about two copies of the batch, on CPU or GPU.

    Args:
        images: ``B x C x H x W`` tensor, normally float in ``[0, 1]`` (uint8 also works). Not modified.
        generator: source of randomness (the same seed gives the same output); ``None`` uses torch's
            default generator. It may live on another device than ``images`` (e.g. a CPU generator for a
            CUDA batch): the random draws are made on the generator's device.
        flip: apply the random horizontal flip.
        pad: padding of the random crop; 0 disables the crop.
        padding_mode: ``"zeros"`` (default, as ``torchvision.transforms.RandomCrop(32, padding=4)``) or
            ``"reflect"``.

    Returns:
        A new tensor with the shape, dtype and device of ``images``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be B x C x H x W, got shape {tuple(images.shape)}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}: expected one of {PADDING_MODES}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    b, c, h, w = images.shape
    if padding_mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"reflect padding needs pad < image size, got pad={pad} for {h}x{w}")
    rng_device = generator.device if generator is not None else images.device
    flips = torch.rand(b, generator=generator, device=rng_device) < 0.5
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=rng_device)
    flips, offsets = flips.to(images.device), offsets.to(images.device)
    if not flip:
        flips = torch.zeros_like(flips)
    if pad == 0 and not bool(flips.any()):
        return images.clone()

    padded = images
    if pad > 0:
        mode = "constant" if padding_mode == "zeros" else "reflect"
        padded = F.pad(images, (pad, pad, pad, pad), mode=mode)
    wp = w + 2 * pad
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # B x H
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # B x W
    cols = torch.where(flips[:, None], wp - 1 - cols, cols)  # crop of the mirrored padded image
    out = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, wp))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


class AugmentedImageDataset(Dataset):
    """Map-style dataset over an :class:`ImageSet` yielding ``(float image in [0, 1], int label)``.

    With ``train=True`` every access draws a fresh random flip and padded crop (see :func:`augment_batch`,
    which it uses on a batch of one, so per-item and batched augmentation are the same operation);
    with ``train=False`` the image is returned unchanged. Everything works on tensors (no PIL per item).
    With ``generator=None`` the randomness comes from torch's default generator, which
    ``torch.utils.data.DataLoader`` seeds differently in each worker.
    """

    def __init__(
        self,
        imageset: ImageSet,
        train: bool,
        *,
        pad: int = 4,
        padding_mode: str = "zeros",
        generator: torch.Generator | None = None,
    ) -> None:
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"unknown padding_mode {padding_mode!r}: expected one of {PADDING_MODES}")
        self.imageset = imageset
        self.train = bool(train)
        self.pad = int(pad)
        self.padding_mode = padding_mode
        self.generator = generator

    def __len__(self) -> int:
        return len(self.imageset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.imageset.images[index].float().div_(255.0)
        if self.train:
            image = augment_batch(image[None], self.generator, pad=self.pad,
                                  padding_mode=self.padding_mode)[0]
        return image, int(self.imageset.labels[index])

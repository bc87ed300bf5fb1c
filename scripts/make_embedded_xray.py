#!/usr/bin/env python
"""Build ``src/linearlens/_embedded/xray_subset.npz``: 48 real radiographs of the shared NIH subset at 128 px.

Selection (deterministic, images sorted by file name, then a seeded shuffle within each group):

* all 8 images that have NIH boxes and are RSNA lung-opacity positives,
* 16 further RSNA positives,
* all 8 images that have NIH boxes and are RSNA negatives,
* 8 further RSNA negatives,
* 8 images with NIH boxes and no RSNA labels.

So 40 images carry RSNA labels (24 positives with their boxes, 16 negatives) and 24 carry NIH boxes.  The
archive stores the fields of :class:`linearlens.data.xray.subset.SubsetTable` (images resized from 256 to
128 px with Pillow bilinear, boxes rescaled) as a deflate-compressed ``.npz`` without pickled objects.

Usage (from the repository root, with ``../shared/data`` present)::

    python scripts/make_embedded_xray.py            # --source ../shared/data/nih-cxr14-subset256 --size 128
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from linearlens.data.xray.subset import SHARED_SUBSET, read_subset_table

OUT = Path("src/linearlens/_embedded/xray_subset.npz")


def select(table, seed: int = 0) -> np.ndarray:
    """Indices of the 48 images described in the module docstring."""
    rng = np.random.default_rng(seed)
    has_nih = np.zeros(len(table.image_ids), dtype=bool)
    has_nih[table.box_image[table.box_source == "nih"]] = True
    order = np.argsort(table.image_ids, kind="stable")

    def pick(mask: np.ndarray, count: int | None, taken: set[int]) -> list[int]:
        pool = [int(i) for i in order if mask[i] and int(i) not in taken]
        if count is not None:
            pool = sorted(rng.permutation(pool)[:count].tolist())
        return pool

    chosen: list[int] = []
    for mask, count in (
        (has_nih & (table.rsna_target == 1), None),
        (table.rsna_target == 1, 16),
        (has_nih & (table.rsna_target == 0), None),
        (table.rsna_target == 0, 8),
        (has_nih & (table.rsna_target < 0), 8),
    ):
        chosen += pick(mask, count, set(chosen))
    return np.array(chosen, dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SHARED_SUBSET)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source} not found (the shared NIH subset is needed to build the archive)", file=sys.stderr)
        return 1
    table = read_subset_table(args.source, args.size)
    small = table.subset(select(table))
    np.savez_compressed(args.out, **small.__dict__)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {len(small.image_ids)} images, {len(small.box_image)} boxes, "
          f"{args.out.stat().st_size / 1e6:.2f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

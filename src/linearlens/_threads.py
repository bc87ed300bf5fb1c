"""Scoped torch thread counts: a library call that needs ``n`` threads leaves the process as it found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["num_threads"]


@contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count afterwards.

    ``n=None`` (or 0) keeps torch's current setting.  The count is process-wide in torch, so the
    restore happens even when the block raises.
    """
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ValueError(f"threads must be a positive int or None, got {n!r}")
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

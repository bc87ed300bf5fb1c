"""Running fused-kernel calls on several torch threads (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from linearlens.layers import _bcos_fused as fused


def run_on_threads(run: Callable[[], tuple], threads: int, monkeypatch) -> tuple[tuple, list[int]]:
    """``run()`` with ``threads`` torch threads and every kernel call split over them (no size threshold);
    returns its results and the thread count each kernel launch saw."""
    calls: list[int] = []
    original = fused._launch
    monkeypatch.setattr(fused, "_PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(fused, "_launch", lambda *a, **k: calls.append(torch.get_num_threads()) or original(*a, **k))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return run(), calls
    finally:
        torch.set_num_threads(previous)

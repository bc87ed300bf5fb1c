"""The speed benchmarks added for issue 12 reject bad arguments with a clear message instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script", ["bench_bcos_streaming_stores.py", "bench_bcos_transposed_shapes.py",
                                    "bench_bcos_kernels.py"])
@pytest.mark.parametrize("repeats", ["0", "-3", "many"])
def test_repeats_must_be_a_positive_integer(script, repeats):
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--repeats", repeats],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"must be a positive integer, got '{repeats}'" in done.stderr
    assert "Traceback" not in done.stderr


def test_transposed_shapes_rejects_an_unsupported_maxout():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_bcos_transposed_shapes.py"), "--max-out", "3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "invalid choice: 3" in done.stderr and "Traceback" not in done.stderr

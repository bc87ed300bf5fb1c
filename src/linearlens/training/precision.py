"""Training precision: float32, bfloat16 autocast (mixed precision), or ``"auto"``.

``"auto"`` picks bfloat16 where the device computes it natively and float32 elsewhere: on a CPU with AMX or
AVX512-BF16 (oneDNN runs bfloat16 convolutions there several times faster than float32 ones; a 64 -> 64 3x3
channels-last convolution took 2.0 ms against 13.5 ms in float32 on this project's Xeon, 1 thread) and on a
CUDA device that supports bfloat16.  Without native support bfloat16 is emulated and slower than float32.
Weights, optimiser state and evaluation stay float32; only the forward pass of training is autocast, and
the B-cos layers then run their fused bfloat16 kernels (:mod:`linearlens.layers._bcos_fused`).
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "native_bfloat16", "resolve_precision", "autocast_for"]

PRECISIONS = ("fp32", "bf16", "auto")
_NATIVE_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively (CPU: AMX or AVX512-BF16 in ``/proc/cpuinfo``; CUDA:
    ``torch.cuda.is_bf16_supported``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and any(flag in _cpu_flags() for flag in _NATIVE_CPU_FLAGS)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"``: ``precision`` itself, or for ``"auto"`` what :func:`native_bfloat16` says."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bfloat16(device) else "fp32"
    return precision


def autocast_for(device: torch.device | str, precision: str = "fp32") -> AbstractContextManager:
    """The forward pass's context: nothing for float32, bfloat16 autocast on ``device`` otherwise."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

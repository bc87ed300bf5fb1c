"""Fused CPU kernels for the B-cos convolution's elementwise work (optional; eager fallback).

What a B-cos convolution adds to ``F.conv2d`` is a little arithmetic and a lot of memory traffic: in
eager PyTorch the patch norms need ``x * x`` written out and read back, and the dynamic scale
``gamma (|o| / d)^(B-1)`` of Eq. (11) and the product with ``o`` are three more full-size passes
(abs, times the per-position factor, times ``o``), MaxOut (Eq. (17)) another two.  These kernels do
each job in ONE pass over the full-size tensors:

* ``channel_squares``: ``sum_c x_c^2`` per group (reads ``x`` once, writes a one-channel map);
* ``scale_forward``: MaxOut winner, dynamic scale and product (reads the convolution's output once,
  writes ``y``; optionally the winning linear output and a one-byte winner mask for the backward);
* ``scale_backward``: ``dL/do = B t dL/dy`` scattered to the MaxOut winners and, in the same pass,
  the channel sum of ``dL/do * o`` that the gradient through the patch norm needs.

They are plain C (no PyTorch headers), compiled once with the system C compiler into a per-user cache
(about a second) and called through :mod:`ctypes` on CPU tensors that are contiguous or channels-last
(NHWC, where oneDNN convolves without reordering; each kernel has an NHWC variant whose per-position
channel sums run over a contiguous row in independent partial sums), stored as float32, float64 or
bfloat16.  bfloat16 values (what the layer computes under CPU bfloat16 autocast) are widened to float32,
computed in float32 and rounded to nearest-even once on store; the per-position maps (patch norms,
multipliers, channel sums) stay float32.  B = 2 and the MaxOut of two units have branch-free loops of their
own, which the compiler vectorises.  A call runs its batch items on torch's own intra-op threads: where
torch's libgomp is loaded the kernels are built with OpenMP and bind to that runtime (one team of threads for
both, which are still spinning after the convolution and start at once); elsewhere, and in a forked child
(libgomp's team does not survive a fork), the batch is split into ``torch.get_num_threads()`` chunks run by a
small worker pool (ctypes releases the GIL). Every item is computed exactly as on one thread. Without a
compiler, on other devices or dtypes, or with ``LINEARLENS_FUSED=0`` in the environment, the layer uses its
eager implementation, which computes the same values.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ._bcos_fused_source import SOURCE as _CORE_SOURCE
from ._bcos_patch_norms_source import SOURCE as _PATCH_NORMS_SOURCE
from ._bcos_transposed_source import SOURCE as _TRANSPOSED_SOURCE

__all__ = ["available", "supports", "channel_squares", "patch_norms", "scale_forward", "scale_backward"]

_SOURCE = _CORE_SOURCE + _PATCH_NORMS_SOURCE + _TRANSPOSED_SOURCE

_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
_OPENMP_FLAG = "-fopenmp"
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}
_I64, _F64, _PTR = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p


def _cache_dir() -> Path:
    root = os.environ.get("LINEARLENS_CACHE") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "linearlens" / "kernels"


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags (a shared home on other CPUs rebuilds)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _build(compiler: str, flags: list[str]) -> Path:
    key = hashlib.sha256("\0".join([_SOURCE, *flags, compiler, _cpu_key(), sys.platform]).encode()).hexdigest()
    target = _cache_dir() / f"bcos_fused_{key[:20]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "bcos_fused.c"
        src.write_text(_SOURCE)
        built = Path(tmp) / target.name
        subprocess.run([compiler, *flags, str(src), "-o", str(built), "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(built, target)  # atomic: concurrent builders each install a complete file
    return target


def _torch_libgomp_loaded() -> bool:
    """Whether torch runs its intra-op threads on a libgomp with the soname ``libgomp.so.1`` that is already
    mapped into this process: a library built with ``-fopenmp`` then binds to that same runtime (the loader
    reuses a loaded soname) and shares torch's threads instead of starting a second team that would compete
    with them."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(line.endswith("/libgomp.so.1") for line in maps.splitlines())


def _shares_torch_openmp(lib: ctypes.CDLL) -> bool:
    """Whether ``lib``'s OpenMP entry point is the one torch's CPU library calls (the same runtime)."""
    try:
        torch_cpu = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        ours, theirs = (ctypes.cast(handle.GOMP_parallel, ctypes.c_void_p).value for handle in (lib, torch_cpu))
    except (OSError, AttributeError):
        return False
    return ours is not None and ours == theirs


def _compiled(compiler: str) -> tuple[ctypes.CDLL, list[str]]:
    """The kernels, built with OpenMP where torch's libgomp is loaded (else, or if that build fails, without)."""
    variants = [_FLAGS + [_OPENMP_FLAG], _FLAGS] if _torch_libgomp_loaded() else [_FLAGS]
    for k, flags in enumerate(variants):
        try:
            return ctypes.CDLL(str(_build(compiler, flags))), flags
        except (OSError, subprocess.SubprocessError):
            if k == len(variants) - 1:
                raise
    raise AssertionError("unreachable")


def _load() -> ctypes.CDLL | None:
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]  # type: ignore[return-value]
        lib = None
        if os.environ.get("LINEARLENS_FUSED", "1") != "0" and sys.platform.startswith("linux"):
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if compiler:
                try:
                    lib, flags = _compiled(compiler)
                    _STATE["flags"] = flags
                    lib.set_parallel_min.argtypes = [_I64]
                    lib.openmp_team_size.restype = ctypes.c_int
                    # OpenMP only if it bound to torch's runtime; else its regions stay serial (see _launch).
                    _STATE["openmp"] = _OPENMP_FLAG in flags and _shares_torch_openmp(lib)
                    _STATE["pid"] = os.getpid()
                    for suffix in ("f32", "f64", "bf16"):
                        getattr(lib, f"channel_squares_{suffix}").argtypes = [_PTR, _PTR, _I64, _I64, _I64]
                        getattr(lib, f"channel_squares_nhwc_{suffix}").argtypes = [_PTR, _PTR] + [_I64] * 4
                        for layout in ("", "nhwc_"):
                            getattr(lib, f"scale_forward_{layout}{suffix}").argtypes = (
                                [_PTR] * 5 + [_I64] * 6 + [_F64] * 2)
                            getattr(lib, f"scale_backward_{layout}{suffix}").argtypes = (
                                [_PTR] * 6 + [_I64] * 5 + [_F64] * 2)
                    for suffix in ("f32", "f64"):
                        getattr(lib, f"patch_norms_{suffix}").argtypes = [_PTR] * 4 + [_I64] * 13 + [_F64] * 2 + [_I64]
                    lib.transposed_available.restype = ctypes.c_int
                    if lib.transposed_available():
                        lib.squares_to_nhwc_f32.argtypes = [_PTR] * 3 + [_I64] * 4
                        lib.scale_forward_to_nchw_f32.argtypes = [_PTR] * 5 + [_I64] * 5 + [_F64] * 2
                        lib.scale_backward_from_nchw_f32.argtypes = [_PTR] * 6 + [_I64] * 5 + [_F64] * 2
                        lib.transposed_maxout_available.restype = ctypes.c_int
                        lib.correct_to_nchw_f32.argtypes = [_PTR] * 4 + [_I64] * 4
                except (OSError, subprocess.SubprocessError) as err:
                    _STATE["error"] = f"{type(err).__name__}: {err}"
                    lib = None
            else:
                _STATE["error"] = "no C compiler found (cc/gcc)"
        _STATE["lib"] = lib
        return lib


def available() -> bool:
    """Whether the fused kernels are compiled and loaded (builds them on the first call)."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False, if it is."""
    _load()
    return _STATE.get("error")  # type: ignore[return-value]


_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}


def channels_last(t: Tensor) -> bool:
    """True when ``t`` is a 4-D tensor laid out channels-last (NHWC) and not also plain contiguous (a tensor
    with one channel or one position is both; the plain kernels serve it)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _dense(t: Tensor) -> bool:
    return t.is_contiguous() or channels_last(t)


def _format(nhwc: bool) -> torch.memory_format:
    return torch.channels_last if nhwc else torch.contiguous_format


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for tensors stored in ``dtype`` (float32 for bfloat16)."""
    return torch.float32 if dtype == torch.bfloat16 else dtype


def supports(*tensors: Tensor, compute: tuple[Tensor, ...] = ()) -> bool:
    """True when every tensor is a dense (contiguous or channels-last) CPU tensor that autograd need not track,
    ``tensors`` all of one float32, float64 or bfloat16 dtype and ``compute`` (the small per-position maps) of
    the dtype the kernels compute in for it (:func:`compute_dtype`), outside any torch.func transform, and the
    kernels are available."""
    first = tensors[0]
    grad = torch.is_grad_enabled()
    high = compute_dtype(first.dtype)
    return (
        first.dtype in _SUFFIX
        and all(
            t.device.type == "cpu" and t.dtype == dtype and _dense(t) and not (grad and t.requires_grad)
            for group, dtype in ((tensors, first.dtype), (compute, high))
            for t in group
        )
        and not torch._C._are_functorch_transforms_active()
        and available()
    )


def _fn(name: str, dtype: torch.dtype, nhwc: bool = False):
    return getattr(_load(), f"{name}_{'nhwc_' if nhwc else ''}{_SUFFIX[dtype]}")


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


# Below this many elements per call a kernel runs on the calling thread: handing chunks to workers costs tens
# of microseconds, which small (late, low-resolution) layers do not repay.
_PARALLEL_MIN_ELEMENTS = 1 << 16
_POOL: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """This process's worker pool (keyed by pid: a forked child inherits the pool object but not its threads,
    and would wait forever on it)."""
    pid = os.getpid()
    with _LOCK:
        if pid not in _POOL:
            _POOL.clear()
            _POOL[pid] = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1),
                                            thread_name_prefix="linearlens-bcos")
        return _POOL[pid]


def _launch(kernel, n: int, buffers: list[tuple[Tensor | None, int]], *rest) -> None:
    """Call ``kernel(*pointers, n, *rest)``, split over the batch on torch's threads.

    Built with OpenMP (:func:`_torch_libgomp_loaded`), a kernel splits its loop over the batch itself, on the
    intra-op threads torch's own operations use (they are still spinning after the convolution before, so
    they start at once).  Otherwise the call is split into ``torch.get_num_threads()`` chunks run by a small
    worker pool: ``buffers`` are the kernel's pointer arguments with their elements per batch item; every
    tensor the kernels touch keeps the batch outermost in memory (NCHW, NHWC and the winner masks alike), so
    a chunk of items is a pointer offset, and ctypes releases the GIL during a call.  Either way every item
    is computed exactly as on one thread.
    """
    # libgomp's team does not survive a fork (a forked child waits forever on the parent's threads, as torch's
    # own operations do there): a forked child switches the kernels' OpenMP off and takes the worker pool.
    openmp = bool(_STATE.get("openmp")) and _STATE.get("pid") == os.getpid()
    parallel_min = _PARALLEL_MIN_ELEMENTS if openmp else 1 << 62
    if _OPENMP_FLAG in _STATE.get("flags", ()) and _STATE.get("parallel_min") != (os.getpid(), parallel_min):  # type: ignore[operator]
        _load().set_parallel_min(parallel_min)  # type: ignore[union-attr]
        _STATE["parallel_min"] = (os.getpid(), parallel_min)
    if openmp:
        kernel(*(_ptr(t) for t, _ in buffers), n, *rest)
        return
    threads = min(torch.get_num_threads(), n)
    total = max((per * n for t, per in buffers if t is not None), default=0)
    if threads < 2 or total < _PARALLEL_MIN_ELEMENTS:
        kernel(*(_ptr(t) for t, _ in buffers), n, *rest)
        return
    bounds = [n * k // threads for k in range(threads + 1)]

    def run(k: int) -> None:
        start = bounds[k]
        kernel(*(None if t is None else t.data_ptr() + start * per * t.element_size() for t, per in buffers),
               bounds[k + 1] - start, *rest)

    futures = [_pool().submit(run, k) for k in range(1, threads)]
    run(0)
    for future in futures:
        future.result()


def channel_squares(x: Tensor, groups: int) -> Tensor:
    """``sum_c x_c^2`` within each group of channels of ``x`` (N, C, H, W), contiguous or channels-last:
    ``(N, groups, H, W)``, contiguous, in the kernels' compute dtype (float32 for a bfloat16 ``x``)."""
    n, c, h, w = x.shape
    out = x.new_empty(n, groups, h, w, dtype=compute_dtype(x.dtype))
    if channels_last(x):
        _launch(_fn("channel_squares", x.dtype, True), n, [(x, c * h * w), (out, groups * h * w)],
                groups, c // groups, h * w)
    else:
        x = x.contiguous()  # rows of (item, group)
        _launch(_fn("channel_squares", x.dtype), n * groups, [(x, c // groups * h * w), (out, h * w)],
                c // groups, h * w)
    return out


def patch_norms(
    squares: Tensor, size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
    dilation: tuple[int, int], padding: tuple[int, int], b: float, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """From the channel squares ``(N, groups, H, W)`` (float32 or float64): the squared patch norms ``S``
    summed over every kernel window of an output of ``size``, ``d = sqrt(max(S, tiny))`` and the multiplier
    ``gamma / d`` (B = 2) or ``1 / d``, each ``(N, groups, H', W')``, in one call (see
    :mod:`._bcos_patch_norms_source`)."""
    squares = squares.contiguous()
    n, groups, h, w = squares.shape
    oh, ow = size
    sums, norm, multiplier = (squares.new_empty(n, groups, oh, ow) for _ in range(3))
    tiny = torch.finfo(squares.dtype).tiny
    _launch(_fn("patch_norms", squares.dtype), n * groups,
            [(squares, h * w), (sums, oh * ow), (norm, oh * ow), (multiplier, oh * ow)],
            h, w, oh, ow, *kernel, *stride, *dilation, *padding, tiny, float(scale), int(b == 2))
    return sums, norm, multiplier


def scale_forward(
    linear: Tensor, multiplier: Tensor, units: int, groups: int, b: float, scale: float,
    out: Tensor | None = None, keep: bool = False, factor_only: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """MaxOut over ``units``, then ``y = f o`` with ``f`` the dynamic scale (see the module docstring).

    ``linear`` is the convolution's output ``(N, C * units, H, W)``, contiguous or channels-last (``y`` and
    the kept tensors take its layout); ``multiplier`` ``(N, groups, H, W)`` is ``gamma / d`` for B = 2 and
    ``1 / d`` otherwise (``d = ||x_patch||``).  ``out`` may be ``linear`` itself when ``units == 1`` (in
    place).  With ``keep`` (and MaxOut) also returns the winning linear outputs and the one-byte winner mask
    ``(N, C, units, H, W)`` the backward needs.  With ``factor_only`` writes the dynamic scale ``f``
    instead of ``y``.
    """
    n, cu, h, w = linear.shape
    c = cu // units
    nhwc = channels_last(linear)
    if not nhwc:
        linear = linear.contiguous()
    multiplier = multiplier.contiguous()
    y = torch.empty((n, c, h, w), dtype=linear.dtype, memory_format=_format(nhwc)) if out is None else out
    if out is not None and out.data_ptr() != linear.data_ptr() and channels_last(out) != nhwc:
        raise ValueError("scale_forward: out must have the layout of linear")
    o_out = win = None
    if keep and units > 1:
        o_out = torch.empty((n, c, h, w), dtype=linear.dtype, memory_format=_format(nhwc))
        # The mask's memory follows the units' order in ``linear``: (N, C, units, H, W) or (N, H, W, C, units).
        win = (torch.empty(n, h, w, c, units, dtype=torch.uint8).permute(0, 3, 4, 1, 2) if nhwc
               else torch.empty(n, c, units, h, w, dtype=torch.uint8))
    hw = h * w
    _launch(
        _fn("scale_forward", linear.dtype, nhwc), n,
        [(linear, cu * hw), (multiplier, groups * hw), (y, c * hw), (o_out, c * hw), (win, cu * hw)],
        c, units, groups, hw, int(factor_only), float(b), float(scale),
    )
    return y, o_out, win


def scale_backward(
    grad_out: Tensor, linear: Tensor, winners: Tensor | None, multiplier: Tensor, units: int, groups: int,
    b: float, scale: float,
) -> tuple[Tensor, Tensor]:
    """``dL/d(conv output)`` (``(N, C * units, H, W)`` in the layout of ``linear``, zero for MaxOut losers)
    and, per group and position, ``sum_c dL/do * o`` (``(N, groups, H, W)``), from ``dL/dy`` and the saved
    winning linear outputs and winner mask (as :func:`scale_forward` made them)."""
    n, c, h, w = grad_out.shape
    # With MaxOut the mask's strides tell the layout of the convolution's output (``linear`` here is the
    # winners' output, which with one channel is both contiguous and channels-last).
    nhwc = channels_last(linear) if winners is None else (winners.stride(2) == 1 and h * w > 1)
    grad_out = grad_out.contiguous(memory_format=_format(nhwc))
    linear = linear.contiguous(memory_format=_format(nhwc))
    multiplier = multiplier.contiguous()
    grad_full = torch.empty((n, c * units, h, w), dtype=grad_out.dtype, memory_format=_format(nhwc))
    sums = grad_out.new_empty(n, groups, h, w, dtype=compute_dtype(grad_out.dtype))
    hw = h * w
    _launch(
        _fn("scale_backward", grad_out.dtype, nhwc), n,
        [(grad_out, c * hw), (linear, c * hw), (winners, c * units * hw), (multiplier, groups * hw),
         (grad_full, c * units * hw), (sums, groups * hw)],
        c, units, groups, hw, float(b), float(scale),
    )
    return grad_full, sums


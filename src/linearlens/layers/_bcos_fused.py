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
own, which the compiler vectorises.  A call is split over the batch into ``torch.get_num_threads()``
chunks run by a small worker pool (ctypes releases the GIL), so the kernels use the cores the convolutions
do; every item is computed exactly as on one thread.  Without a compiler, on other devices or dtypes, or
with ``LINEARLENS_FUSED=0`` in the environment, the layer uses its eager implementation, which computes
the same values.
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

__all__ = ["available", "supports", "channel_squares", "scale_forward", "scale_backward"]

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Storage type S, compute type T.  float32 and float64 compute in what they store; bfloat16 (its 16 bits
   in a uint16_t) is widened to float32 on load and rounded to nearest-even once on store, as torch does. */
#define ID(v) (v)
static inline float ld_bf16(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t st_bf16(float f) {  /* branch-free, so that the loops calling it vectorise */
    uint32_t u; memcpy(&u, &f, 4);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, quiet_nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

/* Every kernel's parameters (pointers first, then the batch size, so that a chunk of the batch is a pointer
   offset), and an always-inlined body taking B = 2 as a compile-time constant: its loops are branch-free. */
#define INLINE static inline __attribute__((always_inline))
#define FORWARD_PARAMS(S, T) const S* lin, const T* restrict mult, S* y, S* restrict o_out, uint8_t* restrict win, \
    int64_t n, int64_t c, int64_t units, int64_t groups, int64_t hw, int64_t factor_only, double b, double scale
#define FORWARD_ARGS lin, mult, y, o_out, win, n, c, units, groups, hw, factor_only, b, scale
#define BACKWARD_PARAMS(S, T) const S* restrict g, const S* restrict lin, const uint8_t* restrict win, \
    const T* restrict mult, S* restrict grad_full, T* restrict sums, int64_t n, int64_t c, int64_t units, \
    int64_t groups, int64_t hw, double b, double scale
#define BACKWARD_ARGS g, lin, win, mult, grad_full, sums, n, c, units, groups, hw, b, scale

#define KERNELS(S, T, SUF, FABS, POW, LD, ST)                                                          \
void channel_squares_##SUF(const S* restrict x, T* restrict out, int64_t rows, int64_t per_group, int64_t hw) { \
    for (int64_t r = 0; r < rows; ++r) {                                                               \
        const S* xr = x + r * per_group * hw;                                                          \
        T* o = out + r * hw;                                                                           \
        for (int64_t p = 0; p < hw; ++p) { const T v = LD(xr[p]); o[p] = v * v; }                      \
        for (int64_t k = 1; k < per_group; ++k) {                                                      \
            const S* xk = xr + k * hw;                                                                 \
            for (int64_t p = 0; p < hw; ++p) { const T v = LD(xk[p]); o[p] += v * v; }                 \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
/* f = |o| m (B = 2, m = gamma / d) or scale (|o| m)^(B-1) (m = 1 / d); y = f o. */                    \
static inline T factor_##SUF(T o, T m, int b_is_two, T bm1, T scale) {                                 \
    T f = FABS(o) * m;                                                                                 \
    if (b_is_two) return f;                                                                            \
    f = POW(f, bm1);                                                                                   \
    return scale != (T)1 ? f * scale : f;                                                              \
}                                                                                                      \
/* dL/do = B t dL/dy, t the dynamic scale */                                                           \
static inline T dlin_##SUF(T gy, T o, T m, int b_is_two, T bm1, T scale, T bb) {                       \
    return bb * (gy * factor_##SUF(o, m, b_is_two, bm1, scale));                                       \
}                                                                                                      \
INLINE void scale_forward_impl_##SUF(FORWARD_PARAMS(S, T), const int b_is_two) {                       \
    const T bm1 = (T)(b - 1.0), sc = (T)scale;                                                         \
    const int64_t per_group = c / groups;                                                              \
    for (int64_t i = 0; i < n; ++i) for (int64_t ch = 0; ch < c; ++ch) {                               \
        const T* m = mult + (i * groups + ch / per_group) * hw;                                        \
        const S* base = lin + (i * c + ch) * units * hw;                                               \
        S* yo = y + (i * c + ch) * hw;                                                                 \
        if (units == 1) {                                                                              \
            for (int64_t p = 0; p < hw; ++p) {                                                         \
                const T o = LD(base[p]);                                                               \
                const T f = factor_##SUF(o, m[p], b_is_two, bm1, sc);                                  \
                yo[p] = ST(factor_only ? f : f * o);                                                   \
            }                                                                                          \
            continue;                                                                                  \
        }                                                                                              \
        S* oo = o_out ? o_out + (i * c + ch) * hw : 0;                                                 \
        uint8_t* w = win ? win + (i * c + ch) * units * hw : 0;                                        \
        if (units == 2 && !factor_only && oo && w) {                                                   \
            /* the common MaxOut of two units, branch-free so that it vectorises */                    \
            for (int64_t p = 0; p < hw; ++p) {                                                         \
                const T a = LD(base[p]), v = LD(base[hw + p]);                                         \
                const T best = (v > a || v != v) ? v : a;                                              \
                oo[p] = ST(best); w[p] = a == best; w[hw + p] = v == best;                             \
                yo[p] = ST(factor_##SUF(best, m[p], b_is_two, bm1, sc) * best);                        \
            }                                                                                          \
            continue;                                                                                  \
        }                                                                                              \
        if (units == 2 && !factor_only && !oo && !w) {                                                 \
            for (int64_t p = 0; p < hw; ++p) {                                                         \
                const T a = LD(base[p]), v = LD(base[hw + p]);                                         \
                const T best = (v > a || v != v) ? v : a;                                              \
                yo[p] = ST(factor_##SUF(best, m[p], b_is_two, bm1, sc) * best);                        \
            }                                                                                          \
            continue;                                                                                  \
        }                                                                                              \
        for (int64_t p = 0; p < hw; ++p) {                                                             \
            T best = LD(base[p]);                                                                      \
            for (int64_t k = 1; k < units; ++k) {                                                      \
                const T v = LD(base[k * hw + p]);                                                      \
                if (v > best || v != v) best = v;                                                      \
            }                                                                                          \
            if (oo) oo[p] = ST(best);                                                                  \
            if (w) for (int64_t k = 0; k < units; ++k) w[k * hw + p] = LD(base[k * hw + p]) == best;   \
            const T f = factor_##SUF(best, m[p], b_is_two, bm1, sc);                                   \
            yo[p] = ST(factor_only ? f : f * best);                                                    \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
void scale_forward_##SUF(FORWARD_PARAMS(S, T)) {                                                       \
    if (b == 2.0) scale_forward_impl_##SUF(FORWARD_ARGS, 1);                                           \
    else scale_forward_impl_##SUF(FORWARD_ARGS, 0);                                                    \
}                                                                                                      \
INLINE void scale_backward_impl_##SUF(BACKWARD_PARAMS(S, T), const int b_is_two) {                     \
    const T bm1 = (T)(b - 1.0), sc = (T)scale, bb = (T)b;                                              \
    const int64_t per_group = c / groups;                                                              \
    for (int64_t r = 0; r < n * groups * hw; ++r) sums[r] = 0;                                         \
    for (int64_t i = 0; i < n; ++i) for (int64_t ch = 0; ch < c; ++ch) {                               \
        const int64_t grp = i * groups + ch / per_group;                                               \
        const T* m = mult + grp * hw;                                                                  \
        T* s = sums + grp * hw;                                                                        \
        const S* go = g + (i * c + ch) * hw;                                                           \
        const S* o = lin + (i * c + ch) * hw;                                                          \
        S* gf = grad_full + (i * c + ch) * units * hw;                                                 \
        if (units == 1) {                                                                              \
            for (int64_t p = 0; p < hw; ++p) {                                                         \
                const T op = LD(o[p]);                                                                 \
                const T gl = bb * (LD(go[p]) * factor_##SUF(op, m[p], b_is_two, bm1, sc));             \
                gf[p] = ST(gl);                                                                        \
                s[p] += gl * op;                                                                       \
            }                                                                                          \
            continue;                                                                                  \
        }                                                                                              \
        const uint8_t* w = win + (i * c + ch) * units * hw;                                            \
        if (units == 2) {                                                                              \
            for (int64_t p = 0; p < hw; ++p) {                                                         \
                const T op = LD(o[p]);                                                                 \
                const T gl = dlin_##SUF(LD(go[p]), op, m[p], b_is_two, bm1, sc, bb);                   \
                s[p] += gl * op;                                                                       \
                const uint8_t wa = w[p], wb = w[hw + p];                                               \
                const T share = (wa & wb) ? gl / (T)2 : gl;                                            \
                gf[p] = ST(wa ? share : (T)0);                                                         \
                gf[hw + p] = ST(wb ? share : (T)0);                                                    \
            }                                                                                          \
            continue;                                                                                  \
        }                                                                                              \
        for (int64_t p = 0; p < hw; ++p) {                                                             \
            const T op = LD(o[p]);                                                                     \
            const T gl = bb * (LD(go[p]) * factor_##SUF(op, m[p], b_is_two, bm1, sc));                 \
            s[p] += gl * op;                                                                           \
            int count = 0;                                                                             \
            for (int64_t k = 0; k < units; ++k) count += w[k * hw + p];                                \
            /* ties share the gradient, as autograd's amax does */                                     \
            const S share = ST(count > 1 ? gl / (T)count : gl), zero = ST((T)0);                       \
            for (int64_t k = 0; k < units; ++k) gf[k * hw + p] = w[k * hw + p] ? share : zero;         \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
void scale_backward_##SUF(BACKWARD_PARAMS(S, T)) {                                                     \
    if (b == 2.0) scale_backward_impl_##SUF(BACKWARD_ARGS, 1);                                         \
    else scale_backward_impl_##SUF(BACKWARD_ARGS, 0);                                                  \
}                                                                                                      \
/* Channels-last (NHWC) variants: the channels of one position are contiguous, so the per-position     \
   sums run over a short contiguous row, in LANES independent partial sums (vectorisable without       \
   reassociating any one sum), and the per-position multiplier is read once per position. */           \
static inline T row_squares_##SUF(const S* x, int64_t len) {                                           \
    T part[LANES] = {0}; int64_t k = 0;                                                                \
    for (; k + LANES <= len; k += LANES)                                                               \
        for (int j = 0; j < LANES; ++j) { const T v = LD(x[k + j]); part[j] += v * v; }                \
    T s = 0; for (int j = 0; j < LANES; ++j) s += part[j];                                             \
    for (; k < len; ++k) { const T v = LD(x[k]); s += v * v; }                                         \
    return s;                                                                                          \
}                                                                                                      \
void channel_squares_nhwc_##SUF(const S* restrict x, T* restrict out, int64_t n, int64_t groups, int64_t per_group, \
                                int64_t hw) {                                                          \
    for (int64_t i = 0; i < n; ++i) for (int64_t p = 0; p < hw; ++p) {                                 \
        const S* xp = x + (i * hw + p) * groups * per_group;                                           \
        for (int64_t g = 0; g < groups; ++g)                                                           \
            out[(i * groups + g) * hw + p] = row_squares_##SUF(xp + g * per_group, per_group);         \
    }                                                                                                  \
}                                                                                                      \
INLINE void scale_forward_nhwc_impl_##SUF(FORWARD_PARAMS(S, T), const int b_is_two) {                  \
    const T bm1 = (T)(b - 1.0), sc = (T)scale;                                                         \
    const int64_t per_group = c / groups;                                                              \
    for (int64_t i = 0; i < n; ++i) for (int64_t p = 0; p < hw; ++p) {                                 \
        const int64_t pos = i * hw + p;                                                                \
        const S* base = lin + pos * c * units;                                                         \
        S* yo = y + pos * c;                                                                           \
        for (int64_t g = 0; g < groups; ++g) {                                                         \
            const T m = mult[(i * groups + g) * hw + p];                                               \
            const int64_t c0 = g * per_group, c1 = c0 + per_group;                                     \
            if (units == 1) {                                                                          \
                for (int64_t ch = c0; ch < c1; ++ch) {                                                 \
                    const T o = LD(base[ch]);                                                          \
                    const T f = factor_##SUF(o, m, b_is_two, bm1, sc);                                 \
                    yo[ch] = ST(factor_only ? f : f * o);                                              \
                }                                                                                      \
                continue;                                                                              \
            }                                                                                          \
            if (units == 2 && o_out && win && !factor_only) {                                          \
                /* the common MaxOut of two units, branch-free so that it vectorises */                \
                for (int64_t ch = c0; ch < c1; ++ch) {                                                 \
                    const T a = LD(base[2 * ch]), v = LD(base[2 * ch + 1]);                            \
                    const T best = (v > a || v != v) ? v : a;                                          \
                    o_out[pos * c + ch] = ST(best);                                                    \
                    win[(pos * c + ch) * 2] = a == best;                                               \
                    win[(pos * c + ch) * 2 + 1] = v == best;                                           \
                    yo[ch] = ST(factor_##SUF(best, m, b_is_two, bm1, sc) * best);                      \
                }                                                                                      \
                continue;                                                                              \
            }                                                                                          \
            if (units == 2 && !o_out && !win && !factor_only) {                                        \
                for (int64_t ch = c0; ch < c1; ++ch) {                                                 \
                    const T a = LD(base[2 * ch]), v = LD(base[2 * ch + 1]);                            \
                    const T best = (v > a || v != v) ? v : a;                                          \
                    yo[ch] = ST(factor_##SUF(best, m, b_is_two, bm1, sc) * best);                      \
                }                                                                                      \
                continue;                                                                              \
            }                                                                                          \
            for (int64_t ch = c0; ch < c1; ++ch) {                                                     \
                const S* u = base + ch * units;                                                        \
                T best = LD(u[0]);                                                                     \
                for (int64_t k = 1; k < units; ++k) {                                                  \
                    const T v = LD(u[k]);                                                              \
                    if (v > best || v != v) best = v;                                                  \
                }                                                                                      \
                if (o_out) o_out[pos * c + ch] = ST(best);                                             \
                if (win) for (int64_t k = 0; k < units; ++k)                                           \
                    win[(pos * c + ch) * units + k] = LD(u[k]) == best;                                \
                const T f = factor_##SUF(best, m, b_is_two, bm1, sc);                                  \
                yo[ch] = ST(factor_only ? f : f * best);                                               \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
void scale_forward_nhwc_##SUF(FORWARD_PARAMS(S, T)) {                                                  \
    if (b == 2.0) scale_forward_nhwc_impl_##SUF(FORWARD_ARGS, 1);                                      \
    else scale_forward_nhwc_impl_##SUF(FORWARD_ARGS, 0);                                               \
}                                                                                                      \
INLINE void scale_backward_nhwc_impl_##SUF(BACKWARD_PARAMS(S, T), const int b_is_two) {                \
    const T bm1 = (T)(b - 1.0), sc = (T)scale, bb = (T)b;                                              \
    const int64_t per_group = c / groups;                                                              \
    for (int64_t i = 0; i < n; ++i) for (int64_t p = 0; p < hw; ++p) {                                 \
        const int64_t pos = i * hw + p;                                                                \
        const S* go = g + pos * c;                                                                     \
        const S* o = lin + pos * c;                                                                    \
        S* gf = grad_full + pos * c * units;                                                           \
        const uint8_t* w = win ? win + pos * c * units : 0;                                            \
        for (int64_t grp = 0; grp < groups; ++grp) {                                                   \
            const T m = mult[(i * groups + grp) * hw + p];                                             \
            const int64_t c0 = grp * per_group, c1 = c0 + per_group;                                   \
            /* dL/do = B t dL/dy to the units (to the MaxOut winners; ties share it, as autograd's amax \
               does), then the channel sum of dL/do * o in a separate loop: each loop vectorises. */   \
            if (units == 1) {                                                                          \
                for (int64_t ch = c0; ch < c1; ++ch)                                                   \
                    gf[ch] = ST(dlin_##SUF(LD(go[ch]), LD(o[ch]), m, b_is_two, bm1, sc, bb));          \
            } else if (units == 2) {                                                                   \
                for (int64_t ch = c0; ch < c1; ++ch) {                                                 \
                    const T gl = dlin_##SUF(LD(go[ch]), LD(o[ch]), m, b_is_two, bm1, sc, bb);          \
                    const uint8_t wa = w[2 * ch], wb = w[2 * ch + 1];                                  \
                    const T share = (wa & wb) ? gl / (T)2 : gl;                                        \
                    gf[2 * ch] = ST(wa ? share : (T)0);                                                \
                    gf[2 * ch + 1] = ST(wb ? share : (T)0);                                            \
                }                                                                                      \
            } else {                                                                                   \
                for (int64_t ch = c0; ch < c1; ++ch) {                                                 \
                    const T gl = dlin_##SUF(LD(go[ch]), LD(o[ch]), m, b_is_two, bm1, sc, bb);          \
                    int count = 0;                                                                     \
                    for (int64_t k = 0; k < units; ++k) count += w[ch * units + k];                    \
                    const T share = count > 1 ? gl / (T)count : gl;                                    \
                    for (int64_t k = 0; k < units; ++k) gf[ch * units + k] = ST(w[ch * units + k] ? share : (T)0); \
                }                                                                                      \
            }                                                                                          \
            T part[LANES] = {0};                                                                       \
            int64_t ch = c0;                                                                           \
            for (; ch + LANES <= c1; ch += LANES) for (int j = 0; j < LANES; ++j) {                    \
                const T op = LD(o[ch + j]);                                                            \
                part[j] += dlin_##SUF(LD(go[ch + j]), op, m, b_is_two, bm1, sc, bb) * op;              \
            }                                                                                          \
            T s = 0; for (int j = 0; j < LANES; ++j) s += part[j];                                     \
            for (; ch < c1; ++ch) {                                                                    \
                const T op = LD(o[ch]);                                                                \
                s += dlin_##SUF(LD(go[ch]), op, m, b_is_two, bm1, sc, bb) * op;                        \
            }                                                                                          \
            sums[(i * groups + grp) * hw + p] = s;                                                     \
        }                                                                                              \
    }                                                                                                  \
}                                                                                                      \
void scale_backward_nhwc_##SUF(BACKWARD_PARAMS(S, T)) {                                                \
    if (b == 2.0) scale_backward_nhwc_impl_##SUF(BACKWARD_ARGS, 1);                                    \
    else scale_backward_nhwc_impl_##SUF(BACKWARD_ARGS, 0);                                             \
}


#define LANES 16
KERNELS(float, float, f32, fabsf, powf, ID, ID)
KERNELS(uint16_t, float, bf16, fabsf, powf, ld_bf16, st_bf16)
#undef LANES
#define LANES 8
KERNELS(double, double, f64, fabs, pow, ID, ID)
"""

_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
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


def _build(compiler: str) -> Path:
    key = hashlib.sha256("\0".join([_SOURCE, *_FLAGS, compiler, _cpu_key(), sys.platform]).encode()).hexdigest()
    target = _cache_dir() / f"bcos_fused_{key[:20]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "bcos_fused.c"
        src.write_text(_SOURCE)
        built = Path(tmp) / target.name
        subprocess.run([compiler, *_FLAGS, str(src), "-o", str(built), "-lm"], check=True, capture_output=True,
                       timeout=120)
        os.replace(built, target)  # atomic: concurrent builders each install a complete file
    return target


def _load() -> ctypes.CDLL | None:
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]  # type: ignore[return-value]
        lib = None
        if os.environ.get("LINEARLENS_FUSED", "1") != "0" and sys.platform.startswith("linux"):
            compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
            if compiler:
                try:
                    lib = ctypes.CDLL(str(_build(compiler)))
                    for suffix in ("f32", "f64", "bf16"):
                        getattr(lib, f"channel_squares_{suffix}").argtypes = [_PTR, _PTR, _I64, _I64, _I64]
                        getattr(lib, f"channel_squares_nhwc_{suffix}").argtypes = [_PTR, _PTR] + [_I64] * 4
                        for layout in ("", "nhwc_"):
                            getattr(lib, f"scale_forward_{layout}{suffix}").argtypes = (
                                [_PTR] * 5 + [_I64] * 6 + [_F64] * 2)
                            getattr(lib, f"scale_backward_{layout}{suffix}").argtypes = (
                                [_PTR] * 6 + [_I64] * 5 + [_F64] * 2)
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
    """Call ``kernel(*pointers, n, *rest)``, split over the batch into ``torch.get_num_threads()`` chunks.

    ``buffers`` are the kernel's pointer arguments with their elements per batch item: every tensor the
    kernels touch keeps the batch outermost in memory (NCHW, NHWC and the winner masks alike), so a chunk of
    items is a pointer offset.  ctypes releases the GIL during a call, so the chunks run in parallel on the
    cores torch was told to use; the calling thread takes the first.
    """
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


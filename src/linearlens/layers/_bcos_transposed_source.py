"""C source of the transposing B-cos kernels (float32, AVX-512), compiled with the other fused kernels.

oneDNN convolves a channels-last (NHWC) tensor in place but reorders a plain (NCHW) one to its blocked layout
and back, which on large feature maps costs more than the B-cos layer's own work.  For a plain input the layer
can convolve channels-last instead, if the layout changes ride on passes it makes anyway:

* ``squares_to_nhwc``: reads ``x`` (NCHW) once, writes its NHWC copy and the per-group channel squares;
* ``scale_forward_to_nchw``: reads the convolution's NHWC output, writes ``y = f o`` in NCHW (Eq. (11));
* ``scale_backward_from_nchw``: reads ``dL/dy`` (NCHW) and ``o`` (NHWC), writes ``dL/do = B f dL/dy`` in NHWC
  and, per group and position, ``sum_c dL/do * o``;
* ``correct_to_nchw``: ``dL/dx`` (NHWC, from the convolution backward) ``+ x * spread`` in NCHW.

A 16 x 16 tile (16 positions x 16 channels) is transposed in registers; partial tiles use masked loads and
stores.  The per-element arithmetic is that of the untransposed kernels, in the same order (channel sums
accumulate channel by channel as the NCHW kernels do), without FMA contraction.  Without AVX-512 the
functions are absent and ``transposed_available`` returns 0: the layer keeps its other paths.
"""

SOURCE = r"""
#ifdef __AVX512F__
#include <immintrin.h>
int transposed_available(void) { return 1; }

/* r[k] holds row k of a 16 x 16 tile; afterwards r[k] holds column k. */
static inline void tr16(__m512 r[16]) {
    __m512 t[16];
    for (int k = 0; k < 16; k += 2) {
        t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 16; k += 4) {
        r[k] = _mm512_shuffle_ps(t[k], t[k + 2], 0x44);
        r[k + 1] = _mm512_shuffle_ps(t[k], t[k + 2], 0xEE);
        r[k + 2] = _mm512_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        r[k + 3] = _mm512_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
    }
    for (int k = 0; k < 16; k += 8) for (int q = 0; q < 4; ++q) {
        t[k + q] = _mm512_shuffle_f32x4(r[k + q], r[k + q + 4], 0x88);
        t[k + q + 4] = _mm512_shuffle_f32x4(r[k + q], r[k + q + 4], 0xDD);
    }
    for (int q = 0; q < 8; ++q) {
        r[q] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0x88);
        r[q + 8] = _mm512_shuffle_f32x4(t[q], t[q + 8], 0xDD);
    }
}
static inline __mmask16 lanes(int64_t len) { return len >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << len) - 1u); }
static inline int64_t min16(int64_t len) { return len < 16 ? len : 16; }

/* Rows of NHWC data (up to 16 positions starting at ``src``, ``clen`` channels each, row stride ``c``) into
   r, transposed: r[k] = channel k over the positions. */
static inline void load_nhwc_tile(__m512 r[16], const float* src, int64_t plen, int64_t c, __mmask16 cm) {
    for (int k = 0; k < 16; ++k) r[k] = k < plen ? _mm512_maskz_loadu_ps(cm, src + k * c) : _mm512_setzero_ps();
    tr16(r);
}
/* Full-size outputs are written with streaming (non-temporal) stores where a row of the tile is whole and
   64-byte aligned: they skip reading each destination line before writing it, which made a transposing pass
   cost about twice a copy.  Partial or unaligned rows use masked stores; every batch item ends with a store
   fence on the thread that wrote it, so the results are visible when the kernel returns. */
static inline int aligned64(const float* p) { return ((uintptr_t)p & 63u) == 0; }
static inline void store_row(float* dst, __mmask16 m, __m512 v) {
    if (m == (__mmask16)0xFFFF && aligned64(dst)) _mm512_stream_ps(dst, v);
    else _mm512_mask_storeu_ps(dst, m, v);
}
static inline void store_nhwc_tile(__m512 r[16], float* dst, int64_t plen, int64_t c, __mmask16 cm) {
    tr16(r);
    for (int k = 0; k < plen; ++k) store_row(dst + k * c, cm, r[k]);
}
/* f = |o| m (B = 2; m = gamma / d) or scale (|o| m)^(B-1) (m = 1 / d), as factor_f32 */
static inline __m512 factor16(__m512 o, __m512 m, int b_is_two, float bm1, float sc) {
    __m512 f = _mm512_mul_ps(_mm512_abs_ps(o), m);
    if (b_is_two) return f;
    float v[16];
    _mm512_storeu_ps(v, f);
    for (int j = 0; j < 16; ++j) { v[j] = powf(v[j], bm1); if (sc != 1.0f) v[j] *= sc; }
    return _mm512_loadu_ps(v);
}

/* Per-group channel sums over a tile, in channel order: the running sum of group *grp at the tile's positions
   starts from what earlier channel blocks left in the map (or 0 at a group's first channel); entering a channel
   of the next group stores it and starts that group's at 0. */
static inline __m512 group_sum_start(const float* si, int64_t c0, int64_t per_group, int64_t hw, __mmask16 pm,
                                     int64_t* grp) {
    *grp = c0 / per_group;
    return c0 % per_group ? _mm512_maskz_loadu_ps(pm, si + *grp * hw) : _mm512_setzero_ps();
}
static inline __m512 group_sum_enter(__m512 acc, int64_t ch, float* si, int64_t per_group, int64_t hw, __mmask16 pm,
                                     int64_t* grp) {
    if (ch / per_group == *grp) return acc;
    _mm512_mask_storeu_ps(si + *grp * hw, pm, acc);
    *grp = ch / per_group;
    return _mm512_setzero_ps();
}

/* The loops run over blocks of 16 channels outermost and positions inside, so that each pass reads and
   writes a few long streams (16 channel rows, or one row of strided cache lines) that the hardware
   prefetches: with positions outermost, 64 channels were 64 short streams and the pass ran at half the
   speed of a copy.  Per-position channel sums carry over the blocks in the output map, in channel order. */
void squares_to_nhwc_f32(const float* restrict x, float* restrict xt, float* restrict sq, int64_t n, int64_t c,
                         int64_t groups, int64_t hw) {
    const int64_t per_group = c / groups;
    const int parallel_ = n * c * hw >= parallel_min;
    PARALLEL for (int64_t i = 0; i < n; ++i) {
        for (int64_t c0 = 0; c0 < c; c0 += 16) {
            const int64_t clen = min16(c - c0);
            const __mmask16 cm = lanes(clen);
            for (int64_t p0 = 0; p0 < hw; p0 += 16) {
                const int64_t plen = min16(hw - p0);
                const __mmask16 pm = lanes(plen);
                const float* xi = x + i * c * hw + p0;
                float* si = sq + i * groups * hw + p0;
                int64_t grp;
                __m512 acc = group_sum_start(si, c0, per_group, hw, pm, &grp);
                __m512 r[16];
                for (int k = 0; k < 16; ++k) {
                    if (k >= clen) { r[k] = _mm512_setzero_ps(); continue; }
                    acc = group_sum_enter(acc, c0 + k, si, per_group, hw, pm, &grp);
                    r[k] = _mm512_maskz_loadu_ps(pm, xi + (c0 + k) * hw);
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(r[k], r[k]));
                }
                _mm512_mask_storeu_ps(si + grp * hw, pm, acc);
                store_nhwc_tile(r, xt + (i * hw + p0) * c + c0, plen, c, cm);
            }
        }
        _mm_sfence();  /* this thread's streaming stores, before the loop's barrier */
    }
}

void scale_forward_to_nchw_f32(const float* restrict lin, const float* restrict mult, float* restrict y, int64_t n,
                               int64_t c, int64_t groups, int64_t hw, double b, double scale) {
    const int64_t per_group = c / groups;
    const int b_is_two = b == 2.0;
    const float bm1 = (float)(b - 1.0), sc = (float)scale;
    const int parallel_ = n * c * hw >= parallel_min;
    PARALLEL for (int64_t i = 0; i < n; ++i) {
        for (int64_t p0 = 0; p0 < hw; p0 += 16) {
            const int64_t plen = min16(hw - p0);
            const __mmask16 pm = lanes(plen);
            for (int64_t c0 = 0; c0 < c; c0 += 16) {
                const int64_t clen = min16(c - c0);
                __m512 r[16];
                load_nhwc_tile(r, lin + (i * hw + p0) * c + c0, plen, c, lanes(clen));
                for (int k = 0; k < clen; ++k) {
                    const __m512 m = _mm512_maskz_loadu_ps(pm, mult + (i * groups + (c0 + k) / per_group) * hw + p0);
                    const __m512 f = factor16(r[k], m, b_is_two, bm1, sc);
                    store_row(y + (i * c + c0 + k) * hw + p0, pm, _mm512_mul_ps(f, r[k]));
                }
            }
        }
        _mm_sfence();  /* this thread's streaming stores, before the loop's barrier */
    }
}

void scale_backward_from_nchw_f32(const float* restrict g, const float* restrict lin, const float* restrict mult,
                                  float* restrict grad_full, float* restrict sums, int64_t n, int64_t c,
                                  int64_t groups, int64_t hw, double b, double scale) {
    const int64_t per_group = c / groups;
    const int b_is_two = b == 2.0;
    const float bm1 = (float)(b - 1.0), sc = (float)scale;
    const __m512 bb = _mm512_set1_ps((float)b);
    const int parallel_ = n * c * hw >= parallel_min;
    PARALLEL for (int64_t i = 0; i < n; ++i) {
        for (int64_t c0 = 0; c0 < c; c0 += 16) {
            const int64_t clen = min16(c - c0);
            const __mmask16 cm = lanes(clen);
            for (int64_t p0 = 0; p0 < hw; p0 += 16) {
                const int64_t plen = min16(hw - p0);
                const __mmask16 pm = lanes(plen);
                float* si = sums + i * groups * hw + p0;
                int64_t grp;
                __m512 acc = group_sum_start(si, c0, per_group, hw, pm, &grp);
                __m512 r[16];
                load_nhwc_tile(r, lin + (i * hw + p0) * c + c0, plen, c, cm);
                for (int k = 0; k < clen; ++k) {
                    acc = group_sum_enter(acc, c0 + k, si, per_group, hw, pm, &grp);
                    const __m512 m = _mm512_maskz_loadu_ps(pm, mult + (i * groups + grp) * hw + p0);
                    const __m512 gy = _mm512_maskz_loadu_ps(pm, g + (i * c + c0 + k) * hw + p0);
                    /* dL/do = B (dL/dy f), and the channel sum of dL/do * o, as scale_backward_f32 */
                    const __m512 gl = _mm512_mul_ps(bb, _mm512_mul_ps(gy, factor16(r[k], m, b_is_two, bm1, sc)));
                    acc = _mm512_add_ps(acc, _mm512_mul_ps(gl, r[k]));
                    r[k] = gl;
                }
                _mm512_mask_storeu_ps(si + grp * hw, pm, acc);
                store_nhwc_tile(r, grad_full + (i * hw + p0) * c + c0, plen, c, cm);
            }
        }
        _mm_sfence();  /* this thread's streaming stores, before the loop's barrier */
    }
}

void correct_to_nchw_f32(const float* restrict gx, const float* restrict x, const float* restrict spread,
                         float* restrict out, int64_t n, int64_t c, int64_t groups, int64_t hw) {
    const int64_t per_group = c / groups;
    const int parallel_ = n * c * hw >= parallel_min;
    PARALLEL for (int64_t i = 0; i < n; ++i) {
        for (int64_t p0 = 0; p0 < hw; p0 += 16) {
            const int64_t plen = min16(hw - p0);
            const __mmask16 pm = lanes(plen);
            for (int64_t c0 = 0; c0 < c; c0 += 16) {
                const int64_t clen = min16(c - c0);
                __m512 r[16], q[16];
                load_nhwc_tile(r, gx + (i * hw + p0) * c + c0, plen, c, lanes(clen));
                load_nhwc_tile(q, x + (i * hw + p0) * c + c0, plen, c, lanes(clen));
                for (int k = 0; k < clen; ++k) {
                    const __m512 s = _mm512_maskz_loadu_ps(pm, spread + (i * groups + (c0 + k) / per_group) * hw + p0);
                    const __m512 sum = _mm512_add_ps(r[k], _mm512_mul_ps(q[k], s));
                    store_row(out + (i * c + c0 + k) * hw + p0, pm, sum);
                }
            }
        }
        _mm_sfence();  /* this thread's streaming stores, before the loop's barrier */
    }
}
#else
int transposed_available(void) { return 0; }
#endif
"""

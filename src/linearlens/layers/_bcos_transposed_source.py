"""C source of the transposing B-cos kernels (float32, AVX-512), compiled with the other fused kernels.

oneDNN convolves a channels-last (NHWC) tensor in place but reorders a plain (NCHW) one to its blocked layout
and back, which on large feature maps costs more than the B-cos layer's own work.  For a plain input the layer
can convolve channels-last instead, if the layout changes ride on passes it makes anyway:

* ``squares_to_nhwc``: reads ``x`` (NCHW) once, writes its NHWC copy and the per-group channel squares;
* ``scale_forward_to_nchw``: reads the convolution's NHWC output, writes ``y = f o`` in NCHW (Eq. (11));
* ``scale_backward_from_nchw``: reads ``dL/dy`` (NCHW) and ``o`` (NHWC), writes ``dL/do = B f dL/dy`` in NHWC
  and, per group and position, ``sum_c dL/do * o``;
* ``correct_to_nchw``: ``dL/dx`` (NHWC, from the convolution backward) ``+ x * spread`` in NCHW.

With MaxOut of two units (Eq. (17)) the forward also takes each channel's winner and writes the winning
outputs and one-byte winner masks, and the backward spreads ``dL/do`` back to the units by the masks.

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
static inline __mmask16 lanes0(int64_t len) { return len <= 0 ? (__mmask16)0 : lanes(len); }

#if defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__BMI2__)
int transposed_maxout_available(void) { return 1; }
static inline __mmask32 bytes32(int64_t len) {
    return len >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << len) - 1u);
}
static const int32_t EVEN[16] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
static const int32_t ODD[16] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
static const int32_t MIX_LO[16] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
static const int32_t MIX_HI[16] = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
/* The MaxOut of two units (interleaved per channel in the channels-last convolution output, row stride 2c)
   for up to 16 positions x clen channels, as scale_forward_nhwc does it: the winning outputs written
   channels-last to best (row stride c), the one-byte winner masks to win (row stride 2c; ties mark both, NaN
   wins), and the winners transposed into r (r[k] = channel k over the positions). */
static inline void load_maxout_tile(__m512 r[16], const float* src, float* best, uint8_t* win, int64_t plen,
                                    int64_t c, int64_t clen) {
    const __m512i even = _mm512_loadu_si512(EVEN), odd = _mm512_loadu_si512(ODD);
    const __mmask16 cm = lanes(clen), lo = lanes0(2 * clen), hi = lanes0(2 * clen - 16);
    for (int k = 0; k < 16; ++k) {
        if (k >= plen) { r[k] = _mm512_setzero_ps(); continue; }
        const float* row = src + k * 2 * c;
        const __m512 u0 = _mm512_maskz_loadu_ps(lo, row), u1 = _mm512_maskz_loadu_ps(hi, row + 16);
        const __m512 a = _mm512_permutex2var_ps(u0, even, u1), v = _mm512_permutex2var_ps(u0, odd, u1);
        const __mmask16 take_v = _mm512_cmp_ps_mask(v, a, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        const __m512 w = _mm512_mask_blend_ps(take_v, a, v);
        const uint32_t bits = _pdep_u32(_mm512_cmp_ps_mask(a, w, _CMP_EQ_OQ), 0x55555555u)
                              | _pdep_u32(_mm512_cmp_ps_mask(v, w, _CMP_EQ_OQ), 0xAAAAAAAAu);
        store_row(best + k * c, cm, w);
        _mm256_mask_storeu_epi8(win + k * 2 * c, bytes32(2 * clen), _mm256_maskz_set1_epi8(bits, 1));
        r[k] = w;
    }
    tr16(r);
}
/* dL/do (r[k] = channel k over the positions) to the two units, as scale_backward_nhwc does: to the winner,
   shared in halves on a tie, 0 to a loser; written interleaved channels-last (row stride 2c). */
static inline void store_maxout_tile(__m512 r[16], float* dst, const uint8_t* win, int64_t plen, int64_t c,
                                     int64_t clen) {
    const __m512i mix_lo = _mm512_loadu_si512(MIX_LO), mix_hi = _mm512_loadu_si512(MIX_HI);
    const __m512 two = _mm512_set1_ps(2.0f);
    const __mmask16 lo = lanes0(2 * clen), hi = lanes0(2 * clen - 16);
    tr16(r);
    for (int k = 0; k < plen; ++k) {
        const __m256i bytes = _mm256_maskz_loadu_epi8(bytes32(2 * clen), win + k * 2 * c);
        const uint32_t bits = _mm256_test_epi8_mask(bytes, bytes);
        const __mmask16 wa = (__mmask16)_pext_u32(bits, 0x55555555u), wb = (__mmask16)_pext_u32(bits, 0xAAAAAAAAu);
        const __m512 share = _mm512_mask_div_ps(r[k], wa & wb, r[k], two);
        const __m512 ga = _mm512_maskz_mov_ps(wa, share), gb = _mm512_maskz_mov_ps(wb, share);
        store_row(dst + k * 2 * c, lo, _mm512_permutex2var_ps(ga, mix_lo, gb));
        store_row(dst + k * 2 * c + 16, hi, _mm512_permutex2var_ps(ga, mix_hi, gb));
    }
}
#else
int transposed_maxout_available(void) { return 0; }
static inline void load_maxout_tile(__m512 r[16], const float* src, float* best, uint8_t* win, int64_t plen,
                                    int64_t c, int64_t clen) {
    (void)r; (void)src; (void)best; (void)win; (void)plen; (void)c; (void)clen;
}
static inline void store_maxout_tile(__m512 r[16], float* dst, const uint8_t* win, int64_t plen, int64_t c,
                                     int64_t clen) {
    (void)r; (void)dst; (void)win; (void)plen; (void)c; (void)clen;
}
#endif

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

/* units = 2: the MaxOut of two units first (load_maxout_tile), also writing the winning outputs and the
   winner masks for the backward. */
void scale_forward_to_nchw_f32(const float* restrict lin, const float* restrict mult, float* restrict y,
                               float* restrict best, uint8_t* restrict win, int64_t n, int64_t c, int64_t units,
                               int64_t groups, int64_t hw, double b, double scale) {
    const int64_t per_group = c / groups;
    const int b_is_two = b == 2.0;
    const float bm1 = (float)(b - 1.0), sc = (float)scale;
    const int parallel_ = n * c * units * hw >= parallel_min;
    PARALLEL for (int64_t i = 0; i < n; ++i) {
        for (int64_t p0 = 0; p0 < hw; p0 += 16) {
            const int64_t plen = min16(hw - p0);
            const __mmask16 pm = lanes(plen);
            for (int64_t c0 = 0; c0 < c; c0 += 16) {
                const int64_t clen = min16(c - c0);
                __m512 r[16];
                const int64_t at = (i * hw + p0) * c + c0;
                if (units == 2) load_maxout_tile(r, lin + 2 * at, best + at, win + 2 * at, plen, c, clen);
                else load_nhwc_tile(r, lin + at, plen, c, lanes(clen));
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

/* units = 2: lin holds the winning outputs and dL/do goes to the units by the winner masks
   (store_maxout_tile). */
void scale_backward_from_nchw_f32(const float* restrict g, const float* restrict lin, const uint8_t* restrict win,
                                  const float* restrict mult, float* restrict grad_full, float* restrict sums,
                                  int64_t n, int64_t c, int64_t units, int64_t groups, int64_t hw, double b,
                                  double scale) {
    const int64_t per_group = c / groups;
    const int b_is_two = b == 2.0;
    const float bm1 = (float)(b - 1.0), sc = (float)scale;
    const __m512 bb = _mm512_set1_ps((float)b);
    const int parallel_ = n * c * units * hw >= parallel_min;
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
                const int64_t at = (i * hw + p0) * c + c0;
                if (units == 2) store_maxout_tile(r, grad_full + 2 * at, win + 2 * at, plen, c, clen);
                else store_nhwc_tile(r, grad_full + at, plen, c, cm);
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

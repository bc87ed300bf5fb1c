"""C source of the fused B-cos kernels (``channel_squares``, ``scale_forward``, ``scale_backward`` and their
channels-last variants), compiled and called by :mod:`._bcos_fused`, which documents them."""

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Threads: with OpenMP (built with -fopenmp only where torch's own libgomp is loaded, so that both share one
   runtime and one team of threads), an exported kernel runs its batch items on torch's intra-op threads when
   its full-size tensors hold at least parallel_min elements.  Each item goes to the always-inlined body with
   B = 2 as a compile-time constant (the outlined parallel region would otherwise see it as a variable and
   the loops would not vectorise), and is computed exactly as on one thread. */
static int64_t parallel_min = 65536;
void set_parallel_min(int64_t elements) { parallel_min = elements; }
#ifdef _OPENMP
#include <omp.h>
#define PARALLEL _Pragma("omp parallel for schedule(static) if(parallel_)")
int openmp_team_size(void) {
    int size = 1;
    _Pragma("omp parallel") { _Pragma("omp single") size = omp_get_num_threads(); }
    return size;
}
#else
#define PARALLEL
int openmp_team_size(void) { return 0; }
#endif

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

/* An exported kernel: its batch items, each through IMPL with B = 2 or not as a compile-time constant. */
#define PER_ITEM_FORWARD(IMPL)                                                                         \
    const int parallel_ = n * c * units * hw >= parallel_min;                                          \
    (void)parallel_;                                                                                   \
    PARALLEL for (int64_t i = 0; i < n; ++i) {                                                         \
        const int64_t full = c * units * hw, out = c * hw;                                             \
        if (b == 2.0) IMPL(lin + i * full, mult + i * groups * hw, y + i * out, o_out ? o_out + i * out : 0, \
                           win ? win + i * full : 0, 1, c, units, groups, hw, factor_only, b, scale, 1);  \
        else IMPL(lin + i * full, mult + i * groups * hw, y + i * out, o_out ? o_out + i * out : 0,       \
                  win ? win + i * full : 0, 1, c, units, groups, hw, factor_only, b, scale, 0);           \
    }
#define PER_ITEM_BACKWARD(IMPL)                                                                        \
    const int parallel_ = n * c * units * hw >= parallel_min;                                          \
    (void)parallel_;                                                                                   \
    PARALLEL for (int64_t i = 0; i < n; ++i) {                                                         \
        const int64_t full = c * units * hw, out = c * hw;                                             \
        if (b == 2.0) IMPL(g + i * out, lin + i * out, win ? win + i * full : 0, mult + i * groups * hw,  \
                           grad_full + i * full, sums + i * groups * hw, 1, c, units, groups, hw, b, scale, 1); \
        else IMPL(g + i * out, lin + i * out, win ? win + i * full : 0, mult + i * groups * hw,           \
                  grad_full + i * full, sums + i * groups * hw, 1, c, units, groups, hw, b, scale, 0);    \
    }

#define KERNELS(S, T, SUF, FABS, POW, LD, ST)                                                          \
INLINE void channel_squares_row_##SUF(const S* restrict xr, T* restrict o, int64_t per_group, int64_t hw) { \
    for (int64_t p = 0; p < hw; ++p) { const T v = LD(xr[p]); o[p] = v * v; }                          \
    for (int64_t k = 1; k < per_group; ++k) {                                                          \
        const S* xk = xr + k * hw;                                                                     \
        for (int64_t p = 0; p < hw; ++p) { const T v = LD(xk[p]); o[p] += v * v; }                     \
    }                                                                                                  \
}                                                                                                      \
void channel_squares_##SUF(const S* restrict x, T* restrict out, int64_t rows, int64_t per_group, int64_t hw) { \
    const int parallel_ = rows * per_group * hw >= parallel_min;                                       \
    (void)parallel_;                                                                                   \
    PARALLEL for (int64_t r = 0; r < rows; ++r)                                                        \
        channel_squares_row_##SUF(x + r * per_group * hw, out + r * hw, per_group, hw);                \
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
void scale_forward_##SUF(FORWARD_PARAMS(S, T)) { PER_ITEM_FORWARD(scale_forward_impl_##SUF) }          \
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
void scale_backward_##SUF(BACKWARD_PARAMS(S, T)) { PER_ITEM_BACKWARD(scale_backward_impl_##SUF) }      \
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
INLINE void channel_squares_nhwc_item_##SUF(const S* restrict x, T* restrict out, int64_t groups, int64_t per_group, \
                                            int64_t hw) {                                              \
    for (int64_t p = 0; p < hw; ++p) {                                                                 \
        const S* xp = x + p * groups * per_group;                                                      \
        for (int64_t g = 0; g < groups; ++g) out[g * hw + p] = row_squares_##SUF(xp + g * per_group, per_group); \
    }                                                                                                  \
}                                                                                                      \
void channel_squares_nhwc_##SUF(const S* restrict x, T* restrict out, int64_t n, int64_t groups, int64_t per_group, \
                                int64_t hw) {                                                          \
    const int parallel_ = n * groups * per_group * hw >= parallel_min;                                 \
    (void)parallel_;                                                                                   \
    PARALLEL for (int64_t i = 0; i < n; ++i)                                                           \
        channel_squares_nhwc_item_##SUF(x + i * groups * per_group * hw, out + i * groups * hw, groups,     \
                                        per_group, hw);                                                \
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
void scale_forward_nhwc_##SUF(FORWARD_PARAMS(S, T)) { PER_ITEM_FORWARD(scale_forward_nhwc_impl_##SUF) } \
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
void scale_backward_nhwc_##SUF(BACKWARD_PARAMS(S, T)) { PER_ITEM_BACKWARD(scale_backward_nhwc_impl_##SUF) }


#define LANES 16
KERNELS(float, float, f32, fabsf, powf, ID, ID)
KERNELS(uint16_t, float, bf16, fabsf, powf, ld_bf16, st_bf16)
#undef LANES
#define LANES 8
KERNELS(double, double, f64, fabs, pow, ID, ID)
"""

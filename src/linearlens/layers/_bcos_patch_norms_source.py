"""C source of the patch-norm kernel, compiled with the other fused kernels (:mod:`._bcos_fused`).

``patch_norms`` turns the per-group channel squares ``(N * groups, H, W)`` into the three small maps every
B-cos convolution needs, in one call: ``S = ||x_patch||^2`` summed over each kernel window (Eq. (3)'s
denominator, zero padding, any kernel size, stride and dilation), ``d = sqrt(max(S, tiny))`` and the
per-position multiplier ``gamma / d`` (B = 2) or ``1 / d``.  In eager PyTorch these are a dozen calls on
small maps (pad, slices and sums, clamp, sqrt, reciprocal), each a dispatch and a small allocation.
The arithmetic is that of :meth:`BcosConv2d._patch_sums` in its order (kernel rows summed first, then
columns; padding adds zeros) and of torch's ``scalar / tensor`` (``(1 / d) * gamma``), so the maps are equal.
"""

SOURCE = r"""
#define PATCH_NORMS(T, SUF, SQRT)                                                                        \
void patch_norms_##SUF(const T* restrict sq, T* restrict sums, T* restrict norm, T* restrict mult,      \
                       int64_t rows, int64_t h, int64_t w, int64_t oh, int64_t ow, int64_t kh, int64_t kw, \
                       int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t ph, int64_t pw,         \
                       double tiny, double scale, int64_t b_is_two) {                                  \
    const T floor_ = (T)tiny, gamma = (T)scale;                                                        \
    const int parallel_ = rows * oh * ow * kh * kw >= parallel_min;                                    \
    PARALLEL for (int64_t r = 0; r < rows; ++r) {                                                      \
        const T* s = sq + r * h * w;                                                                   \
        const int64_t out0 = r * oh * ow;                                                              \
        for (int64_t oy = 0; oy < oh; ++oy) for (int64_t ox = 0; ox < ow; ++ox) {                      \
            T total = 0;                                                                               \
            for (int64_t j = 0; j < kw; ++j) {                                                         \
                const int64_t x = ox * sw + j * dw - pw;                                               \
                T column = 0;                                                                          \
                for (int64_t i = 0; i < kh; ++i) {                                                     \
                    const int64_t y = oy * sh + i * dh - ph;                                           \
                    const T v = (x >= 0 && x < w && y >= 0 && y < h) ? s[y * w + x] : (T)0;            \
                    column = i ? column + v : v;                                                       \
                }                                                                                      \
                total = j ? total + column : column;                                                   \
            }                                                                                          \
            const int64_t o = out0 + oy * ow + ox;                                                     \
            const T d = SQRT(total < floor_ ? floor_ : total);                                         \
            sums[o] = total; norm[o] = d;                                                              \
            mult[o] = b_is_two ? ((T)1 / d) * gamma : (T)1 / d;                                        \
        }                                                                                              \
    }                                                                                                  \
}
PATCH_NORMS(float, f32, sqrtf)
PATCH_NORMS(double, f64, sqrt)
"""

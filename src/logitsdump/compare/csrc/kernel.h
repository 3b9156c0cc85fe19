/* What kernel.c calls in simd_avx512.c and simd_avx2.c: the pair loop and the top-k scan. */
#ifndef LOGITSDUMP_KERNEL_H
#define LOGITSDUMP_KERNEL_H

#include <stddef.h>

/* The float64 reductions of one logits pair (see metrics.PairSums). */
typedef struct {
    double gg, mm, gm;   /* sum g*g, sum m*m, sum g*m */
    double abs_g, abs_m; /* sum |g|, sum |m| */
    double z_g, z_m;     /* sum exp(g - g_shift), sum exp(m - m_shift) */
    double weighted;     /* sum exp(g - g_shift) * (g - m) */
    double abs_diff_max; /* max |g - m| */
} PairSums;

/* g and m: n values each, float32 (f32) or float64 (f64), any alignment; the shifts are their maxima. */
typedef void (*PairLoop)(const void *g, const void *m, ptrdiff_t n, double g_shift, double m_shift, PairSums *out);
#define TOPK_BLOCK 64 /* values per block of the top-k scan: a multiple of every LANES */
#define TOP_K_SCRATCH(n, k) ((k) + (n) / TOPK_BLOCK)
/* Indices of the k largest of n values into `top`, largest first, ties to the lower index; NaN and -inf
   are never chosen. `scratch` holds TOP_K_SCRATCH(n, k) doubles; *finite is set to whether every value
   is finite. Returns how many were found (k, or fewer when fewer values qualify). */
typedef ptrdiff_t (*TopK)(const void *x, ptrdiff_t n, ptrdiff_t k, ptrdiff_t *top, double *scratch, int *finite);

#define DECLARE_KERNELS(suffix)                                                                   \
    void pair_sums_f32_##suffix(const void *, const void *, ptrdiff_t, double, double, PairSums *); \
    void pair_sums_f64_##suffix(const void *, const void *, ptrdiff_t, double, double, PairSums *); \
    ptrdiff_t top_k_f32_##suffix(const void *, ptrdiff_t, ptrdiff_t, ptrdiff_t *, double *, int *); \
    ptrdiff_t top_k_f64_##suffix(const void *, ptrdiff_t, ptrdiff_t, ptrdiff_t *, double *, int *);

DECLARE_KERNELS(lanes8) /* eight float64 lanes in 512-bit vectors, for AVX-512 CPUs (simd_avx512.c) */
DECLARE_KERNELS(lanes4) /* four lanes in 256-bit vectors, for AVX2 + FMA CPUs (simd_avx2.c) */

#endif

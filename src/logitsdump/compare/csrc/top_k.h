/*
 * The top-k scan: indices of the k largest values, largest first, ties to the lower index
 * (the order of a stable sort by descending value); NaN and -inf are never chosen. The same
 * pass tells whether every value is finite.
 *
 * Included (after vectors.h) by simd_avx512.c and simd_avx2.c. The values are scanned in
 * blocks of TOPK_BLOCK: a block is looked at element by element only when its maximum (one
 * vector pass) is above the k-th value held so far, so after the first blocks almost every
 * block is skipped. The held values stay sorted; a new value goes after those >= it, which
 * keeps ties in index order.
 */
#include "kernel.h"

#define TOPK_BLOCK 64 /* elements per block: a multiple of LANES */

typedef int32_t vmask32 __attribute__((vector_size(LANES * sizeof(int32_t))));

/* The k best so far: value[0..count) descending, top[] their indices. */
typedef struct {
    ptrdiff_t k, count;
    double *value;
    ptrdiff_t *top;
} Held;

INLINE double threshold(const Held *held)
{
    return held->count == held->k ? held->value[held->k - 1] : -__builtin_inf();
}

INLINE void offer(Held *held, double v, ptrdiff_t index)
{
    if (!(v > threshold(held)))
        return;
    ptrdiff_t at = held->count < held->k ? held->count++ : held->k - 1;
    for (; at > 0 && held->value[at - 1] < v; at--) {
        held->value[at] = held->value[at - 1];
        held->top[at] = held->top[at - 1];
    }
    held->value[at] = v;
    held->top[at] = index;
}

/* max of TOPK_BLOCK values, NaN ignored (-inf when all are NaN); `poison` becomes NaN at a
   NaN or infinite value (v * 0 is NaN exactly for those). */
INLINE double block_max_f32(const float *x, vfloat *poison)
{
    vfloat best = (vfloat){0} - __builtin_inff(), v;
    for (int i = 0; i < TOPK_BLOCK; i += LANES) {
        memcpy(&v, x + i, sizeof v);
        *poison += v * 0.0f;
        vmask32 more = v > best;
        best = (vfloat)(((vmask32)v & more) | ((vmask32)best & ~more));
    }
    double top = -__builtin_inf();
    for (int j = 0; j < LANES; j++)
        top = best[j] > top ? best[j] : top;
    return top;
}

INLINE double block_max_f64(const double *x, vdouble *poison)
{
    vdouble best = (vdouble){0} - __builtin_inf(), v;
    for (int i = 0; i < TOPK_BLOCK; i += LANES) {
        memcpy(&v, x + i, sizeof v);
        *poison += v * 0.0;
        best = lanes_where(v > best, v, best);
    }
    double top = -__builtin_inf();
    for (int j = 0; j < LANES; j++)
        top = best[j] > top ? best[j] : top;
    return top;
}

INLINE double value_at(const void *x, ptrdiff_t i, int itemsize)
{
    return itemsize == 4 ? (double)((const float *)x)[i] : ((const double *)x)[i];
}

/* One scan; itemsize is a constant in each caller, so the compiler keeps one branch. */
INLINE ptrdiff_t top_k_body(const void *x, ptrdiff_t n, ptrdiff_t k, ptrdiff_t *top, double *scratch, int *finite,
                            int itemsize)
{
    Held held = {k, 0, scratch, top};
    vfloat poison_f32 = {0};
    vdouble poison_f64 = {0};
    double tail_poison = 0;
    ptrdiff_t i = 0;
    for (; i + TOPK_BLOCK <= n; i += TOPK_BLOCK) {
        double best = itemsize == 4 ? block_max_f32((const float *)x + i, &poison_f32)
                                    : block_max_f64((const double *)x + i, &poison_f64);
        if (best > threshold(&held))
            for (ptrdiff_t j = i; j < i + TOPK_BLOCK; j++)
                offer(&held, value_at(x, j, itemsize), j);
    }
    for (; i < n; i++) {
        tail_poison += value_at(x, i, itemsize) * 0.0;
        offer(&held, value_at(x, i, itemsize), i);
    }
    for (int j = 0; j < LANES; j++)
        tail_poison += (double)poison_f32[j] + poison_f64[j];
    *finite = tail_poison == tail_poison;
    return held.count;
}

ptrdiff_t WITH_LANES(top_k_f32)(const void *x, ptrdiff_t n, ptrdiff_t k, ptrdiff_t *top, double *scratch, int *finite)
{
    return top_k_body(x, n, k, top, scratch, finite, 4);
}

ptrdiff_t WITH_LANES(top_k_f64)(const void *x, ptrdiff_t n, ptrdiff_t k, ptrdiff_t *top, double *scratch, int *finite)
{
    return top_k_body(x, n, k, top, scratch, finite, 8);
}

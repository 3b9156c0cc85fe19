/*
 * The top-k scan: indices of the k largest values, largest first, ties to the lower index
 * (the order of a stable sort by descending value); NaN and -inf are never chosen. The same
 * pass tells whether every value is finite.
 *
 * Included (after vectors.h) by simd_avx512.c and simd_avx2.c. Two passes:
 * 1. the maximum of every block of TOPK_BLOCK values (vector code); the k-th largest of these
 *    maxima, tau, is a lower bound of the k-th largest value (k blocks reach it);
 * 2. element by element, only the blocks whose maximum is >= tau (about k of them: fewer than
 *    k have a larger maximum; the others equal to tau can only add ties) and above the k-th value
 *    held so far, then the ragged tail.
 * So the work is one vector pass plus O(k * TOPK_BLOCK) comparisons, whatever the order of the
 * values (sorted input too). The held values stay sorted; a new value goes after those >= it,
 * and blocks are visited in index order, which keeps ties in index order.
 */
#include "kernel.h"

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
    ptrdiff_t blocks = n / TOPK_BLOCK, tail = blocks * TOPK_BLOCK;
    double *block_max = scratch + k; /* scratch: k held values, then one maximum per block */
    vfloat poison_f32 = {0};
    vdouble poison_f64 = {0};
    double tail_poison = 0;
    for (ptrdiff_t b = 0; b < blocks; b++)
        block_max[b] = itemsize == 4 ? block_max_f32((const float *)x + b * TOPK_BLOCK, &poison_f32)
                                     : block_max_f64((const double *)x + b * TOPK_BLOCK, &poison_f64);
    for (ptrdiff_t i = tail; i < n; i++)
        tail_poison += value_at(x, i, itemsize) * 0.0;
    for (int j = 0; j < LANES; j++)
        tail_poison += (double)poison_f32[j] + poison_f64[j];
    *finite = tail_poison == tail_poison;

    Held held = {k, 0, scratch, top};
    for (ptrdiff_t b = 0; b < blocks; b++) /* tau: the k-th largest block maximum */
        offer(&held, block_max[b], b);
    double tau = blocks >= k ? threshold(&held) : -__builtin_inf();

    held.count = 0;
    for (ptrdiff_t b = 0; b < blocks; b++)
        if (block_max[b] >= tau && block_max[b] > threshold(&held)) /* else nothing in it can enter */
            for (ptrdiff_t i = b * TOPK_BLOCK; i < (b + 1) * TOPK_BLOCK; i++)
                offer(&held, value_at(x, i, itemsize), i);
    for (ptrdiff_t i = tail; i < n; i++)
        offer(&held, value_at(x, i, itemsize), i);
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

/*
 * The pair loop: the float64 reductions of one logits pair (PairSums, kernel.h) in one pass.
 *
 * Included (after vectors.h) by simd_avx512.c (LANES 8) and simd_avx2.c (LANES 4),
 * each compiled for its instruction set; kernel.c picks one at run time. The numpy
 * path (metrics.pair_sums_numpy) makes about 25 passes over the two vectors;
 * this makes one, LANES values of each at a time. Every operation is in float64.
 *
 * Same result on every run: each lane adds its elements in index order, lane
 * sums are added per block, then the blocks, then the lanes pairwise; no
 * thread and no timing is involved. (The other vector width, or the numpy
 * path, rounds differently in the last bits; setup.py's -ffp-contract=fast
 * lets the compiler fuse a * b + c, which both targets can.) Rounding error
 * grows with BLOCK / LANES + n / BLOCK, not n.
 *
 * exp: x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite: k * LN2_HI is exact),
 * exp(r) by its Taylor series to r^13 (truncation < 5e-18 relative), times
 * 2^k built in the exponent bits. Arguments are x - max <= 0; below -708 the
 * result is 0 (such terms are < 1e-307 of a sum that is >= 1).
 */
#include "kernel.h"

#define BLOCK 1024 /* elements per block of lane sums: a multiple of LANES */

static const double LOG2E = 0x1.71547652b82fep0;
static const double LN2_HI = 0x1.62e42fee00000p-1; /* low 21 bits zero: k * LN2_HI is exact */
static const double LN2_LO = 0x1.a39ef35793c76p-33;
static const double ROUNDER = 0x1.8p52; /* x + ROUNDER - ROUNDER rounds x to an integer */
static const uint64_t ROUNDER_BITS = 0x4338000000000000u;

INLINE vdouble exp_nonpositive(vdouble x)
{
    vdouble t = x * LOG2E + ROUNDER;
    vdouble k = t - ROUNDER;
    vdouble r = (x - k * LN2_HI) - k * LN2_LO;
    vdouble p = r * (1.0 / 6227020800.0) + 1.0 / 479001600.0; /* Horner: 1/13! r^13 + ... + r + 1 */
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    vbits scale = ((vbits)t - ROUNDER_BITS + 1023u) << 52; /* 2^k: the low bits of t hold k */
    vmask underflow = x < -708.0;
    return lanes_where(underflow, (vdouble){0}, p * (vdouble)scale);
}

typedef struct {
    vdouble gg, mm, gm, abs_g, abs_m, z_g, z_m, weighted;
} Totals;

/* Products, magnitudes and max |g - m| of one vector; `valid` masks the lanes past the end. */
INLINE void add_moments(Totals *t, vdouble *abs_diff_max, vdouble g, vdouble m, vmask valid)
{
    vdouble d = masked(valid, vabs(g - m));
    t->gg += masked(valid, g * g);
    t->mm += masked(valid, m * m);
    t->gm += masked(valid, g * m);
    t->abs_g += masked(valid, vabs(g));
    t->abs_m += masked(valid, vabs(m));
    *abs_diff_max = lanes_where(d > *abs_diff_max, d, *abs_diff_max);
}

/* exp(g - g_shift), exp(m - m_shift) and exp(g - g_shift) * (g - m) of one vector. */
INLINE void add_exponentials(Totals *t, vdouble g, vdouble m, double g_shift, double m_shift, vmask valid)
{
    vdouble e_g = exp_nonpositive(g - g_shift);
    t->z_g += masked(valid, e_g);
    t->z_m += masked(valid, exp_nonpositive(m - m_shift));
    t->weighted += masked(valid, e_g * (g - m));
}

INLINE void add_totals(Totals *into, const Totals *block)
{
    into->gg += block->gg;
    into->mm += block->mm;
    into->gm += block->gm;
    into->abs_g += block->abs_g;
    into->abs_m += block->abs_m;
    into->z_g += block->z_g;
    into->z_m += block->z_m;
    into->weighted += block->weighted;
}

INLINE void pair_sums_body(const void *g, const void *m, ptrdiff_t n, double g_shift, double m_shift, PairSums *out,
                           int itemsize)
{
    const vmask all = ~(vmask){0};
    Totals total = {0};
    vdouble abs_diff_max = {0};
    ptrdiff_t full = n - n % LANES;
    for (ptrdiff_t start = 0; start < full; start += BLOCK) {
        ptrdiff_t end = start + BLOCK < full ? start + BLOCK : full;
        Totals block = {0};
        for (ptrdiff_t i = start; i < end; i += LANES) {
            vdouble g_values = load(g, i, itemsize), m_values = load(m, i, itemsize);
            add_moments(&block, &abs_diff_max, g_values, m_values, all);
            add_exponentials(&block, g_values, m_values, g_shift, m_shift, all);
        }
        add_totals(&total, &block);
    }
    if (full < n) {
        vmask valid;
        for (int j = 0; j < LANES; j++)
            valid[j] = j < n - full ? -1 : 0;
        vdouble g_tail = load_tail(g, full, n - full, itemsize), m_tail = load_tail(m, full, n - full, itemsize);
        Totals block = {0};
        add_moments(&block, &abs_diff_max, g_tail, m_tail, valid);
        add_exponentials(&block, g_tail, m_tail, g_shift, m_shift, valid);
        add_totals(&total, &block);
    }
    out->gg = lane_sum(total.gg);
    out->mm = lane_sum(total.mm);
    out->gm = lane_sum(total.gm);
    out->abs_g = lane_sum(total.abs_g);
    out->abs_m = lane_sum(total.abs_m);
    out->z_g = lane_sum(total.z_g);
    out->z_m = lane_sum(total.z_m);
    out->weighted = lane_sum(total.weighted);
    out->abs_diff_max = 0.0;
    for (int j = 0; j < LANES; j++)
        out->abs_diff_max = abs_diff_max[j] > out->abs_diff_max ? abs_diff_max[j] : out->abs_diff_max;
}

void WITH_LANES(pair_sums_f32)(const void *g, const void *m, ptrdiff_t n, double g_shift, double m_shift, PairSums *out)
{
    pair_sums_body(g, m, n, g_shift, m_shift, out, 4);
}

void WITH_LANES(pair_sums_f64)(const void *g, const void *m, ptrdiff_t n, double g_shift, double m_shift, PairSums *out)
{
    pair_sums_body(g, m, n, g_shift, m_shift, out, 8);
}

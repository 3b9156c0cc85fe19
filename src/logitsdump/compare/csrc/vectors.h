/*
 * Vector types and helpers for the kernels, LANES float64 lanes wide (LANES set by the including file).
 *
 * GCC's generic vector types: the compiler maps each operation to the instruction set of the
 * including file (AVX-512 or AVX2), and every lane does the same IEEE operations as scalar code.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef double vdouble __attribute__((vector_size(LANES * sizeof(double))));
typedef float vfloat __attribute__((vector_size(LANES * sizeof(float))));
typedef int64_t vmask __attribute__((vector_size(LANES * sizeof(int64_t))));
typedef uint64_t vbits __attribute__((vector_size(LANES * sizeof(uint64_t))));

#define INLINE static inline __attribute__((always_inline))

INLINE vdouble lanes_where(vmask mask, vdouble yes, vdouble no)
{
    return (vdouble)(((vmask)yes & mask) | ((vmask)no & ~mask));
}

INLINE vdouble vabs(vdouble x)
{
    return (vdouble)((vbits)x & 0x7fffffffffffffffu);
}

INLINE vdouble masked(vmask valid, vdouble x)
{
    return lanes_where(valid, x, (vdouble){0});
}

INLINE vdouble load(const void *base, ptrdiff_t i, int itemsize)
{
    if (itemsize == 4) {
        vfloat v;
        memcpy(&v, (const float *)base + i, sizeof v);
        return __builtin_convertvector(v, vdouble);
    }
    vdouble v;
    memcpy(&v, (const double *)base + i, sizeof v);
    return v;
}

/* The tail (< LANES elements), zero-padded; its padding lanes are masked out. */
INLINE vdouble load_tail(const void *base, ptrdiff_t i, ptrdiff_t count, int itemsize)
{
    double padded[LANES] = {0};
    for (ptrdiff_t j = 0; j < count; j++)
        padded[j] = itemsize == 4 ? (double)((const float *)base)[i + j] : ((const double *)base)[i + j];
    vdouble v;
    memcpy(&v, padded, sizeof v);
    return v;
}

INLINE double lane_sum(vdouble v)
{
    for (int width = LANES / 2; width > 0; width /= 2) /* pairwise: lane j + lane j + width */
        for (int j = 0; j < width; j++)
            v[j] += v[j + width];
    return v[0];
}

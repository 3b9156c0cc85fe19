/* The kernels with four float64 lanes, compiled for x86-64-v3 (AVX2, FMA); called only on such CPUs. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,bmi2"))), apply_to = function)
#else
#pragma GCC target("arch=x86-64-v3")
#endif
#define LANES 4
#define WITH_LANES(name) name##_lanes4
#include "vectors.h"
#include "pair_loop.h"
#include "top_k.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif

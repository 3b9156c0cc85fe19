/* The kernels with eight float64 lanes, compiled for x86-64-v4 (AVX-512); called only on such CPUs. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,bmi2"))), \
                             apply_to = function)
#else
#pragma GCC target("arch=x86-64-v4")
#endif
#define LANES 8
#define WITH_LANES(name) name##_lanes8
#include "vectors.h"
#include "pair_loop.h"
#include "top_k.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif

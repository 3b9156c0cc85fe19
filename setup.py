"""Build configuration that pyproject.toml cannot express: the optional C pair loop of `compare`.

`logitsdump.compare._kernel` (src/logitsdump/compare/csrc) computes a pair's float64
sums in one pass on x86-64 CPUs with AVX2 or AVX-512. It is optional: where it cannot be
built (no C compiler, another platform) the package installs without it and compare
uses its numpy path, with the same results to the last few bits.
"""

from setuptools import Extension, setup

CSRC = "src/logitsdump/compare/csrc"

setup(
    ext_modules=[
        Extension(
            "logitsdump.compare._kernel",
            sources=[f"{CSRC}/kernel.c", f"{CSRC}/simd_avx512.c", f"{CSRC}/simd_avx2.c"],
            depends=[f"{CSRC}/{name}" for name in ("kernel.h", "vectors.h", "pair_loop.h", "top_k.h")],
            # -ffp-contract=fast: a * b + c may be one fused multiply-add (the AVX2 and AVX-512 loops
            # always have FMA), the same in every build with one compiler.
            extra_compile_args=["-O3", "-ffp-contract=fast", "-Wno-psabi"],
            optional=True,
        )
    ]
)

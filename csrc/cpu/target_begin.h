// Opens a per-instruction-set unit: define SK_TARGET_AVX2 or SK_TARGET_AVX512 (or neither, for
// the baseline), include this, then the kernel header(s), then target_end.h. The instruction
// set comes from a pragma, not a command-line flag, so only the kernels are compiled for it
// (headers included earlier stay baseline), and the dispatchers call such a unit only on a CPU
// that reports it. Sets SK_KERNELS_AVX2 / SK_KERNELS_AVX512 for the kernel headers.
// No include guard: each unit includes it once.
#if defined(__x86_64__) || defined(__i386__)
#if defined(SK_TARGET_AVX512)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx512f,avx2,fma")
#endif
#define SK_KERNELS_AVX512 1
#elif defined(SK_TARGET_AVX2)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,fma")
#endif
#define SK_KERNELS_AVX2 1
#endif
#endif

// The CPU kernels for AVX2 + FMA. Only this unit is compiled for them (the pragma, not a
// command-line flag), and the dispatcher calls it only on a CPU that reports both.
#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,fma")
#endif
#define SK_KERNELS_AVX2 1
#endif
#define SK_KERNELS_NS avx2
#include "bsmm_kernels.h"
#if defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma clang attribute pop
#endif

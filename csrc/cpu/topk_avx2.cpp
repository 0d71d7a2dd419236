// The top-k projection passes for AVX2. Only this unit is compiled for it (the pragma, not a
// command-line flag; the standard headers are included before it, so their inline code
// stays baseline), and topk.cpp calls it only when the CPU kernels run AVX2 or better.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC target("avx2,fma")
#endif
#endif
#define SK_TOPK_NS avx2_topk
#include "topk_kernels.h"
#if defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma clang attribute pop
#endif

// The AbsTopK passes for AVX2 (see target_begin.h; the standard headers are included before it,
// so their inline code stays baseline); abs_topk.cpp calls it only when the CPU kernels run
// AVX2 or better.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <memory>
#include <new>

#define SK_TARGET_AVX2 1
#include "target_begin.h"
#define SK_ABS_TOPK_NS avx2_abs_topk
#include "abs_topk_kernels.h"
#include "target_end.h"

// The top-k projection passes for AVX2 (see target_begin.h; the standard headers are included
// before it, so their inline code stays baseline); topk.cpp calls it only when the CPU kernels
// run AVX2 or better.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <vector>

#define SK_TARGET_AVX2 1
#include "target_begin.h"
#define SK_TOPK_NS avx2_topk
#include "topk_kernels.h"
#include "target_end.h"

// AbsTopK on the CPU: argument checks and the choice of instruction set (the passes:
// abs_topk_kernels.h; the algorithm: abs_topk.h).
#include "abs_topk.h"

namespace sparsekern {
namespace cpu {

#define SK_ABS_TOPK_DECLARE(ns)                                                                           \
  namespace ns {                                                                                          \
  AbsTopkStatus abs_topk(const void* x, AbsTopkDtype dtype, int64_t rows, int64_t n, int64_t k, void* values, \
                         uint8_t* kept, ParallelFor parallel_for);                                        \
  }
SK_ABS_TOPK_DECLARE(portable_abs_topk)
SK_ABS_TOPK_DECLARE(avx2_abs_topk)
#undef SK_ABS_TOPK_DECLARE

AbsTopkStatus abs_topk(const void* x, AbsTopkDtype dtype, int64_t rows, int64_t n, int64_t k, void* values,
                       uint8_t* kept, ParallelFor parallel_for) {
  if (rows < 0 || n < 0 || n > INT32_MAX || k < 0 || k > n || dtype < kAbsTopkF32 || dtype > kAbsTopkBF16)
    return kAbsTopkBadArgument;
  if (rows == 0 || n == 0) return kAbsTopkOk;
  if (x == nullptr || values == nullptr || kept == nullptr) return kAbsTopkBadArgument;
  // The AVX2 build serves AVX-512 machines too: the passes are bound by memory and by the
  // scalar histogram, not by vector width.
  return active_isa() != Isa::kPortable
             ? avx2_abs_topk::abs_topk(x, dtype, rows, n, k, values, kept, parallel_for)
             : portable_abs_topk::abs_topk(x, dtype, rows, n, k, values, kept, parallel_for);
}

}  // namespace cpu
}  // namespace sparsekern

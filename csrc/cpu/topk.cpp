// Exact top-k magnitude projection on the CPU: argument checks and the choice of
// instruction set (the passes themselves: topk_kernels.h; the algorithm: topk.h).
#include "topk.h"

namespace sparsekern {
namespace cpu {

#define SK_TOPK_DECLARE(ns)                                                                                     \
  namespace ns {                                                                                                \
  TopkStatus select(const void* data, TopkDtype dtype, int64_t rows, int64_t cols, const uint8_t* forced,     \
                    int64_t k, ParallelFor parallel_for, int64_t* plan);                                        \
  TopkStatus floors(const void* data, TopkDtype dtype, int64_t rows, int64_t cols, int64_t min_per_row,       \
                    int64_t min_per_col, ParallelFor parallel_for, uint8_t* mask, int64_t* count,             \
                    uint32_t* min_key);                                                                         \
  int64_t apply(void* data, TopkDtype dtype, int64_t rows, int64_t cols, const uint8_t* forced,               \
                const int64_t* plan, int64_t block_out, int64_t block_in, int32_t* block_counts,              \
                KeptIndex* index, ParallelFor parallel_for);                                                    \
  }
SK_TOPK_DECLARE(portable_topk)
SK_TOPK_DECLARE(avx2_topk)
#undef SK_TOPK_DECLARE

namespace {
// The AVX2 build serves AVX-512 machines too: these passes are bound by memory, not width.
bool use_avx2() { return active_isa() != Isa::kPortable; }
}  // namespace

TopkStatus topk_select(const void* data, TopkDtype dtype, int64_t rows, int64_t cols, const uint8_t* forced,
                       int64_t k, ParallelFor parallel_for, int64_t* plan) {
  if (rows <= 0 || cols <= 0 || k < 0 || k > rows * cols || plan == nullptr || data == nullptr ||
      dtype < kTopkF32 || dtype > kTopkBF16)
    return kTopkBadArgument;
  return use_avx2() ? avx2_topk::select(data, dtype, rows, cols, forced, k, parallel_for, plan)
                    : portable_topk::select(data, dtype, rows, cols, forced, k, parallel_for, plan);
}

TopkStatus topk_floors(const void* data, TopkDtype dtype, int64_t rows, int64_t cols, int64_t min_per_row,
                       int64_t min_per_col, ParallelFor parallel_for, uint8_t* mask, int64_t* count,
                       uint32_t* min_key) {
  if (rows <= 0 || cols <= 0 || min_per_row < 0 || min_per_row > cols || min_per_col < 0 || min_per_col > rows ||
      data == nullptr || mask == nullptr || count == nullptr || min_key == nullptr || dtype < kTopkF32 ||
      dtype > kTopkBF16)
    return kTopkBadArgument;
  return use_avx2() ? avx2_topk::floors(data, dtype, rows, cols, min_per_row, min_per_col, parallel_for, mask,
                                        count, min_key)
                    : portable_topk::floors(data, dtype, rows, cols, min_per_row, min_per_col, parallel_for,
                                            mask, count, min_key);
}

int64_t topk_apply(void* data, TopkDtype dtype, int64_t rows, int64_t cols, const uint8_t* forced,
                   const int64_t* plan, int64_t block_out, int64_t block_in, int32_t* block_counts,
                   KeptIndex* index, ParallelFor parallel_for) {
  if (rows <= 0 || cols <= 0 || data == nullptr || plan == nullptr || dtype < kTopkF32 || dtype > kTopkBF16)
    return -1;
  if (plan[kPlanChunks] < 1 || plan[kPlanChunks] > kTopkMaxChunks || plan[kPlanChunks] > rows) return -1;
  // What apply sizes its buffers by: the entries kept, at most all of them.
  if (plan[kPlanGreater] < 0 || plan[kPlanTies] < 0 || plan[kPlanGreater] > rows * cols ||
      plan[kPlanTies] > rows * cols - plan[kPlanGreater])
    return -1;
  if (block_out > 0 && (block_in <= 0 || block_counts == nullptr)) return -1;
  // The index holds int32 positions: rows and columns must fit.
  if (index != nullptr && (rows > INT32_MAX || cols > INT32_MAX)) return -1;
  return use_avx2() ? avx2_topk::apply(data, dtype, rows, cols, forced, plan, block_out, block_in, block_counts,
                                       index, parallel_for)
                    : portable_topk::apply(data, dtype, rows, cols, forced, plan, block_out, block_in,
                                           block_counts, index, parallel_for);
}

}  // namespace cpu
}  // namespace sparsekern

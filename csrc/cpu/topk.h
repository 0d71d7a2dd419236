// Exact top-k magnitude projection of a dense matrix, in place, for the CPU.
// Torch-free: raw pointers and sizes only; csrc/bindings.cpp wraps it for torch.
//
// Three entry points; the first two are read-only, so a caller can check and plan many
// matrices before changing any of them:
//   topk_floors  the floor set (each row's / column's largest few), as a byte mask.
//   topk_select  finds the k-th largest key, |w|'s bit pattern (for non-negative IEEE
//                floats the bits, read as an unsigned int, order like the values),
//                without sorting. Large matrices: one read pass counts the keys above a
//                bracket [lo, hi] guessed from a strided sample and collects the few keys
//                inside it, then selects among those; when the bracket misses (or holds
//                too many keys: heavy ties), or for small matrices, a radix select: one
//                16-bit histogram pass for fp16/bf16, two for fp32. k = 0 or k = n: one
//                finiteness pass. Rejects NaN/Inf. Fills a plan: the cutoff key, and how
//                many entries equal to it each row chunk keeps, so ties go to the lowest
//                row-major index.
//   topk_apply   one write pass: zeroes every entry not kept, counts the nonzeros left,
//                per block if asked (the occupancy a new block layout is built from).
#pragma once

#include <cstdint>
#include <vector>

#include "bsmm_cpu.h"  // ParallelFor: the caller's parallel loop (torch's thread pool)

namespace sparsekern {
namespace cpu {

enum TopkDtype : int32_t { kTopkF32 = 0, kTopkF16 = 1, kTopkBF16 = 2 };

enum TopkStatus : int32_t { kTopkOk = 0, kTopkNonFinite = 1, kTopkBadArgument = 2 };

// The plan is an int64 array, so bindings can hand it to Python as a plain tensor.
constexpr int kTopkMaxChunks = 64;
enum TopkPlanField : int32_t {
  kPlanCutoff = 0,    // entries with key > cutoff are kept
  kPlanGreater = 1,   // how many keys are > cutoff
  kPlanTies = 2,      // how many keys == cutoff are kept (the first ones, row-major)
  kPlanChunks = 3,    // row chunks the work was split into (apply uses the same split)
  kPlanQuota = 4,     // kPlanQuota + c: ties kept by chunk c
  kPlanChunkTies = kPlanQuota + kTopkMaxChunks,  // kPlanChunkTies + c: keys == cutoff in chunk c
  kTopkPlanLength = kPlanChunkTies + kTopkMaxChunks,
};

// Key of an entry: |w|'s bit pattern (sign cleared); entries flagged in `forced` get the
// largest key of all, above every finite magnitude, so they are kept first.
//
// data: rows x cols, contiguous, row-major; forced: rows x cols bytes or nullptr;
// 0 <= k <= rows * cols (the caller checks floors against k). Every entry point runs its
// row (or column) chunks through parallel_for; nullptr runs them in order on this thread.
TopkStatus topk_select(const void* data, TopkDtype dtype, int64_t rows, int64_t cols,
                       const uint8_t* forced, int64_t k, ParallelFor parallel_for, int64_t* plan);

// The floor set F: every row's min_per_row and every column's min_per_col largest keys
// (ties: lowest index), written to mask (rows x cols bytes, 0 or 1, fully written).
// Reads every entry, so it also rejects NaN/Inf. *count gets |F|, *min_key the smallest
// key in F (unchanged when F is empty).
TopkStatus topk_floors(const void* data, TopkDtype dtype, int64_t rows, int64_t cols, int64_t min_per_row,
                       int64_t min_per_col, ParallelFor parallel_for, uint8_t* mask, int64_t* count,
                       uint32_t* min_key);

// The entries topk_apply leaves nonzero, listed in its write pass (each row is listed while
// it is still in L1, right after it is written), so an element layout needs no second pass
// over the weight: row-major (CSR, columns ascending within a row) and its transpose (CSC,
// rows ascending within a column, by a counting sort over the list, O(nnz)).
struct KeptIndex {
  std::vector<int64_t> row_ptr;  // rows + 1
  std::vector<int32_t> col_idx;  // nnz
  std::vector<int64_t> col_ptr;  // cols + 1
  std::vector<int32_t> row_idx;  // nnz
};

// Applies a plan from topk_select on the same data, forced mask and shape. When
// block_out > 0, block_counts (ceil(rows/block_out) x ceil(cols/block_in) int32) receives
// the nonzeros left in every block; when index is not nullptr, it receives their index.
// Returns the nonzeros left (negative zeros count as zero), or -1 on a bad argument.
int64_t topk_apply(void* data, TopkDtype dtype, int64_t rows, int64_t cols, const uint8_t* forced,
                   const int64_t* plan, int64_t block_out, int64_t block_in, int32_t* block_counts,
                   KeptIndex* index, ParallelFor parallel_for);

}  // namespace cpu
}  // namespace sparsekern

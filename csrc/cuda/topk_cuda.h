// Launchers of the CUDA top-k projection (torch-free: raw pointers, sizes and strides in
// elements, a stream). Implemented in topk_select.cu and topk_apply.cu (kernels:
// topk_select_kernels.cuh, topk_apply_kernel.cuh); called by csrc/bindings.cpp, which
// checks the arguments first. The same algorithm as the Triton backend
// (sparsekern/projection/topk_kernels.py):
//
//   topk_select  read-only: a radix select over the keys, |w|'s bit patterns (monotone in
//                |w| for non-negative IEEE floats), 8 bits a pass from the top (four passes
//                for fp32, two for fp16/bf16): a 256-bin histogram per CTA in shared memory,
//                added into a global one, then a one-CTA kernel that picks the digit on the
//                device. Then per-CTA counts of keys equal to the cutoff and their exclusive
//                scan, so ties are kept in row-major order until exactly k.
//   topk_apply   one write pass: zeroes what is not kept (to +0), counts the nonzeros left,
//                per layout block if asked.
//
// Every kernel runs on one grid: CTA b covers columns [c * block_c, (c + 1) * block_c) of
// row r, b = r * chunks + c, so CTA ids run in row-major order. Floor entries (forced)
// get the largest key, above every finite magnitude; the caller rejects NaN/Inf.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace sparsekern {
namespace cuda {

// Keys of fp16 and bf16 are alike (15 bits of magnitude), so they share kernels.
enum class TopkKeys : int { k32 = 0, k16 = 1 };

// Columns per CTA: a power of two from 128 (the widest layout block side, so a CTA covers
// whole blocks) to 1024.
int64_t topk_block_cols(int64_t cols);
// CTAs of the grid: the length of the tie scan minus one.
int64_t topk_ctas(int64_t rows, int64_t cols);

struct TopkSelectArgs {
  const void* w;          // rows x cols, element (r, c) at w[r * ld_r + c * ld_c]
  const uint8_t* forced;  // rows x cols bytes, row-major, contiguous; or null (no floors)
  int64_t rows, cols, ld_r, ld_c;
  TopkKeys keys;
  int64_t k;                // 0 <= k <= rows * cols
  int64_t* state;           // [2] out: cutoff key, ties to keep
  unsigned long long* hist; // [256] scratch
  int64_t* ties_before;     // [topk_ctas + 1] out: keys == cutoff in the CTAs before each
};
cudaError_t topk_select(const TopkSelectArgs& args, cudaStream_t stream);

struct TopkApplyArgs {
  void* w;
  const uint8_t* forced;
  int64_t rows, cols, ld_r, ld_c;
  TopkKeys keys;
  const int64_t* state;        // from topk_select on the same weight and forced
  const int64_t* ties_before;  // from topk_select
  unsigned long long* nnz;     // [1], zeroed by the caller: nonzeros left
  int32_t* block_counts;       // ceil(rows / block_out) x ceil(cols / block_in), zeroed; or null
  int block_out, block_in;     // each of 16, 32, 64, 128 when block_counts is given
};
cudaError_t topk_apply(const TopkApplyArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekern

// What the kernels of the CUDA top-k projection share (the algorithm: topk_cuda.h): keys,
// the grid (one CTA per block_c columns of one row), a CTA-wide scan, the argument checks.
// The launch sequences (topk_select_kernels.cuh, topk_apply_kernel.cuh) are templates over a
// `launch(kernel, ctas, args...)` callable, so the launchers (topk_select.cu, topk_apply.cu)
// and the host emulation (tests/cuda_host/emulate_topk.cpp) run exactly the same steps.
#pragma once

#include <initializer_list>

#include "topk_cuda.h"

namespace sparsekern {
namespace cuda {

// Threads per CTA. The host emulation (tests/cuda_host/emulate_topk.cpp) also builds the
// kernels with 64, which runs faster there and walks more tiles per CTA.
#ifndef SPARSEKERN_TOPK_THREADS
#define SPARSEKERN_TOPK_THREADS 256
#endif
constexpr int kTopkThreads = SPARSEKERN_TOPK_THREADS;
static_assert(kTopkThreads % 32 == 0 && kTopkThreads <= 1024, "whole warps, at most 1024 threads");
constexpr int kTopkBins = 256;  // 8-bit digits
constexpr int kTopkMinBlockC = 128, kTopkMaxBlockC = 1024;
constexpr int kTopkMaxBlocksPerCta = kTopkMaxBlockC / 16;  // layout blocks across one CTA

// Key of an entry: |w|'s bits; the floor key kMask sits above every finite magnitude.
template <typename Bits>
struct TopkKey;
template <>
struct TopkKey<uint32_t> {
  static constexpr uint32_t kMask = 0x7fffffffu;
  static constexpr int kBits = 32;
};
template <>
struct TopkKey<uint16_t> {
  static constexpr uint32_t kMask = 0x7fffu;
  static constexpr int kBits = 16;
};

template <typename Bits>
struct TopkParams {
  Bits* w;  // written by the apply kernel only
  const uint8_t* forced;
  int64_t rows, cols, ld_r, ld_c;
  int64_t chunks, block_c;  // CTAs per row, columns per CTA
};

// The row and column range of this CTA.
struct TopkSpan {
  int64_t row, c0, c1;
};
template <typename Bits>
__device__ __forceinline__ TopkSpan topk_span(const TopkParams<Bits>& p) {
  const int64_t b = blockIdx.x;
  const int64_t row = b / p.chunks, c0 = (b % p.chunks) * p.block_c;
  return {row, c0, c0 + p.block_c < p.cols ? c0 + p.block_c : p.cols};
}

template <typename Bits>
__device__ __forceinline__ uint32_t topk_key(const TopkParams<Bits>& p, int64_t row, int64_t col, Bits* raw) {
  const Bits bits = p.w[row * p.ld_r + col * p.ld_c];
  *raw = bits;
  if (p.forced != nullptr && p.forced[row * p.cols + col] != 0) return TopkKey<Bits>::kMask;
  return bits & TopkKey<Bits>::kMask;
}

// Inclusive scan of one value per thread across the CTA, in shared memory s[kTopkThreads];
// *total gets the sum. Every thread of the CTA must call it.
template <typename T>
__device__ __forceinline__ T topk_block_scan(T v, T* s, T* total) {
  const int tid = threadIdx.x;
  s[tid] = v;
  __syncthreads();
  for (int off = 1; off < kTopkThreads; off <<= 1) {
    const T add = tid >= off ? s[tid - off] : T(0);
    __syncthreads();
    s[tid] += add;
    __syncthreads();
  }
  const T incl = s[tid];
  *total = s[kTopkThreads - 1];
  __syncthreads();  // s is reused by the next call
  return incl;
}

// ------------------------------------------------------------------ grid and checks

inline int64_t topk_block_cols_impl(int64_t cols) {
  int64_t b = kTopkMinBlockC;
  while (b < cols && b < kTopkMaxBlockC) b *= 2;
  return b;
}

template <typename Bits>
TopkParams<Bits> topk_params(const void* w, const uint8_t* forced, int64_t rows, int64_t cols, int64_t ld_r,
                             int64_t ld_c) {
  const int64_t block_c = topk_block_cols_impl(cols);
  return {static_cast<Bits*>(const_cast<void*>(w)), forced, rows, cols, ld_r, ld_c,
          (cols + block_c - 1) / block_c, block_c};
}

inline bool topk_shape_ok(const void* w, int64_t rows, int64_t cols, int64_t ld_r, int64_t ld_c) {
  if (w == nullptr || rows <= 0 || cols <= 0 || ld_r < 0 || ld_c < 0) return false;
  const int64_t block_c = topk_block_cols_impl(cols);
  return rows * ((cols + block_c - 1) / block_c) <= 0x7fffffff;  // grid.x
}

}  // namespace cuda
}  // namespace sparsekern

// The write pass of the CUDA top-k projection.
#pragma once

#include "../common/block_index.h"
#include "topk_common.cuh"

namespace sparsekern {
namespace cuda {

// Keeps keys above the cutoff and the first state[1] keys equal to it (row-major), sets
// the rest to +0, counts the nonzeros left (per layout block when block_counts is given).
template <typename Bits>
__global__ void __launch_bounds__(kTopkThreads)
    topk_apply_kernel(const TopkParams<Bits> p, const int64_t* state, const int64_t* ties_before,
                      unsigned long long* nnz, int32_t* block_counts, int block_out, int block_in,
                      int64_t n_block_cols) {
  __shared__ unsigned int per_block[kTopkMaxBlocksPerCta];
  __shared__ int64_t scan[kTopkThreads];
  __shared__ unsigned int cta_nonzeros;
  const int tid = threadIdx.x;
  for (int i = tid; i < kTopkMaxBlocksPerCta; i += kTopkThreads) per_block[i] = 0;
  if (tid == 0) cta_nonzeros = 0;
  __syncthreads();
  const TopkSpan s = topk_span(p);
  const uint32_t cutoff = static_cast<uint32_t>(state[0]);
  const int64_t slots = state[1];
  const int64_t before = ties_before[blockIdx.x], here = ties_before[blockIdx.x + 1] - before;
  // Most CTAs keep all their ties or none (a plain comparison); only where the slots run
  // out are the ties ranked, tile by tile, in column order.
  const bool split = before < slots && before + here > slots;
  const uint32_t keep_from = before < slots ? cutoff : cutoff + 1;
  int64_t rank = before;  // ties in the CTAs and tiles before this tile
  unsigned int nonzeros = 0;
  for (int64_t base = s.c0; base < s.c1; base += kTopkThreads) {  // uniform: the scan synchronises
    const int64_t c = base + tid;
    const bool valid = c < s.c1;
    Bits raw = 0;
    const uint32_t key = valid ? topk_key(p, s.row, c, &raw) : 0u;
    bool keep;
    if (split) {
      const bool tie = valid && key == cutoff;
      int64_t tile_ties;
      const int64_t incl = topk_block_scan<int64_t>(tie ? 1 : 0, scan, &tile_ties);
      keep = key > cutoff || (tie && rank + incl <= slots);
      rank += tile_ties;
    } else {
      keep = key >= keep_from;
    }
    if (!valid) continue;
    if (!keep) {
      if (raw != 0) p.w[s.row * p.ld_r + c * p.ld_c] = Bits(0);  // +0 is already in place
    } else if ((raw & TopkKey<Bits>::kMask) != 0) {
      ++nonzeros;
      if (block_counts != nullptr) atomicAdd(&per_block[(c - s.c0) / block_in], 1u);
    }
  }
  if (nonzeros != 0) atomicAdd(&cta_nonzeros, nonzeros);
  __syncthreads();
  if (tid == 0 && cta_nonzeros != 0) atomicAdd(nnz, static_cast<unsigned long long>(cta_nonzeros));
  if (block_counts != nullptr) {
    // block_c is a multiple of 128, so the CTA starts on a block boundary.
    const int64_t n_local = (s.c1 - s.c0 + block_in - 1) / block_in;
    int32_t* out = block_counts + (s.row / block_out) * n_block_cols + s.c0 / block_in;
    for (int i = tid; i < n_local; i += kTopkThreads)
      if (per_block[i] != 0) atomicAdd(&out[i], static_cast<int32_t>(per_block[i]));
  }
}

// ------------------------------------------------------------------ launch sequence

inline cudaError_t topk_apply_check(const TopkApplyArgs& a) {
  if (!topk_shape_ok(a.w, a.rows, a.cols, a.ld_r, a.ld_c) || a.state == nullptr || a.ties_before == nullptr ||
      a.nnz == nullptr)
    return cudaErrorInvalidValue;
  if (a.block_counts != nullptr) {
    for (int side : {a.block_out, a.block_in})
      if (!index::valid_block_side(side)) return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename Launch>
cudaError_t topk_apply_sequence(const TopkApplyArgs& a, Launch&& launch) {
  auto run = [&]<typename Bits>() -> cudaError_t {
    const TopkParams<Bits> p = topk_params<Bits>(a.w, a.forced, a.rows, a.cols, a.ld_r, a.ld_c);
    const int block_out = a.block_counts != nullptr ? a.block_out : 1;
    const int block_in = a.block_counts != nullptr ? a.block_in : 1;
    return launch(topk_apply_kernel<Bits>, a.rows * p.chunks, p, a.state, a.ties_before, a.nnz, a.block_counts,
                  block_out, block_in, (a.cols + block_in - 1) / block_in);
  };
  return a.keys == TopkKeys::k32 ? run.template operator()<uint32_t>() : run.template operator()<uint16_t>();
}

}  // namespace cuda
}  // namespace sparsekern

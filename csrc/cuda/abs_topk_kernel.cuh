// The CUDA AbsTopK kernel (the algorithm: abs_topk_cuda.h) and its launch sequence, a template
// over `launch(kernel, grid, threads, params)`: a CUDA launch on a stream in abs_topk.cu
// (stream_launch.cuh), an emulated one in tests/cuda_host/emulate_abs_topk.cpp, so the host
// emulation runs exactly the launcher's steps.
#pragma once

#include <cstdint>

#include "abs_topk_cuda.h"

namespace sparsekern {
namespace cuda {

// Threads per CTA. The host emulation also builds the kernel with 64 (faster there, more
// entries a thread and several bins a thread in the digit pick).
#ifndef SPARSEKERN_ABS_TOPK_THREADS
#define SPARSEKERN_ABS_TOPK_THREADS 256
#endif
constexpr int kAbsTopkThreads = SPARSEKERN_ABS_TOPK_THREADS;
constexpr int kAbsTopkWarps = kAbsTopkThreads / 32;
constexpr int kAbsTopkBins = 256;  // 8-bit digits
static_assert(kAbsTopkThreads % 32 == 0 && kAbsTopkThreads <= kAbsTopkBins && kAbsTopkBins % kAbsTopkThreads == 0,
              "whole warps, each thread owning a whole number of bins");

// The key of an entry of Bits (its dtype's bit pattern): |x|'s bits, every NaN kInf + 1.
template <typename Bits, uint32_t kInf>
struct AbsTopkKey {
  using BitsType = Bits;
  static constexpr int kBits = 8 * sizeof(Bits);
  static constexpr uint32_t kMagnitude = kBits == 32 ? 0x7fffffffu : 0x7fffu;
  __device__ __forceinline__ static uint32_t of(Bits bits) {
    const uint32_t m = static_cast<uint32_t>(bits) & kMagnitude;
    return m > kInf ? kInf + 1 : m;
  }
};
using AbsTopkKeyF32 = AbsTopkKey<uint32_t, 0x7f800000u>;
using AbsTopkKeyF16 = AbsTopkKey<uint16_t, 0x7c00u>;
using AbsTopkKeyBF16 = AbsTopkKey<uint16_t, 0x7f80u>;

template <typename Bits>
struct AbsTopkParams {
  const Bits* x;
  Bits* values;
  uint8_t* kept;
  int64_t n, k;
};

// Exclusive scan of one value a thread across the CTA (warp shuffles, then the warps' totals in
// warp_sums[kAbsTopkWarps]). Every thread of the CTA must call it.
__device__ __forceinline__ uint32_t abs_topk_exclusive_scan(uint32_t v, uint32_t* warp_sums) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  uint32_t incl = v;
  for (int off = 1; off < 32; off <<= 1) {
    const uint32_t up = __shfl_sync(0xffffffffu, incl, (lane - off) & 31);
    if (lane >= off) incl += up;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  uint32_t before = 0;
  for (int w = 0; w < warp; ++w) before += warp_sums[w];
  __syncthreads();  // warp_sums is reused by the next call
  return before + incl - v;
}

template <class Key>
__global__ void __launch_bounds__(kAbsTopkThreads) abs_topk_kernel(const AbsTopkParams<typename Key::BitsType> p) {
  using Bits = typename Key::BitsType;
  constexpr int kPerThread = kAbsTopkBins / kAbsTopkThreads;  // bins a thread owns in the pick
  __shared__ uint32_t hist[kAbsTopkBins];
  __shared__ uint32_t warp_sums[kAbsTopkWarps];
  __shared__ uint32_t pick[2];  // the digit, the keys of this prefix above it
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int64_t row = blockIdx.x;
  const Bits* x = p.x + row * p.n;

  // The select: after the pass at `shift`, `prefix` holds the threshold's digits above `shift`
  // and `remaining` how many keys with that prefix are still to keep (1 <= remaining <= their count).
  uint32_t threshold = 0xffffffffu, remaining = 0;  // k = 0: no key above it, no tie kept
  if (p.k > 0) {
    uint32_t prefix = 0;
    remaining = static_cast<uint32_t>(p.k);
    for (int shift = Key::kBits - 8; shift >= 0; shift -= 8) {
      for (int b = tid; b < kAbsTopkBins; b += kAbsTopkThreads) hist[b] = 0;
      __syncthreads();
      const bool first = shift + 8 >= Key::kBits;  // no higher digit yet
      for (int64_t c = tid; c < p.n; c += kAbsTopkThreads) {
        const uint32_t key = Key::of(x[c]);
        if (first || (key >> (shift + 8)) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
      }
      __syncthreads();
      // The digit holding the remaining-th largest key: thread t owns kPerThread bins from the
      // top down (digits 255 - t * kPerThread - j); a scan of their sums gives the keys above each.
      uint32_t h[kPerThread], sum = 0;
      for (int j = 0; j < kPerThread; ++j) {
        h[j] = hist[kAbsTopkBins - 1 - (tid * kPerThread + j)];
        sum += h[j];
      }
      uint32_t above = abs_topk_exclusive_scan(sum, warp_sums);
      for (int j = 0; j < kPerThread; ++j) {
        if (above < remaining && above + h[j] >= remaining) {  // exactly one bin of the CTA
          pick[0] = kAbsTopkBins - 1 - (tid * kPerThread + j);
          pick[1] = above;
        }
        above += h[j];
      }
      __syncthreads();
      prefix = (prefix << 8) | pick[0];
      remaining -= pick[1];
      // No barrier needed here: hist and pick are next written after two more barriers.
    }
    threshold = prefix;
  }

  // The write pass, kAbsTopkThreads entries at a time: a tie is kept while fewer than
  // `remaining` ties come before it in the row.
  Bits* values = p.values + row * p.n;
  uint8_t* kept = p.kept + row * p.n;
  uint32_t ties_before = 0;  // in the chunks before this one
  for (int64_t base = 0; base < p.n; base += kAbsTopkThreads) {
    const int64_t c = base + tid;
    const bool valid = c < p.n;
    const Bits bits = valid ? x[c] : Bits(0);
    const uint32_t key = Key::of(bits);
    const bool tie = valid && key == threshold;
    const unsigned ballot = __ballot_sync(0xffffffffu, tie);
    if (lane == 0) warp_sums[warp] = __popc(ballot);
    __syncthreads();
    uint32_t rank = ties_before + __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < kAbsTopkWarps; ++w) {
      const uint32_t s = warp_sums[w];
      rank += w < warp ? s : 0u;
      total += s;
    }
    const bool keep = valid && (key > threshold || (tie && rank < remaining));
    if (valid) {
      values[c] = keep ? bits : Bits(0);
      kept[c] = keep ? 1 : 0;
    }
    ties_before += total;
    __syncthreads();  // warp_sums is rewritten by the next chunk
  }
}

// ------------------------------------------------------------------ checks and launch sequence

inline cudaError_t abs_topk_check(const AbsTopkArgs& a) {
  if (a.rows < 0 || a.n < 0 || a.rows > 0x7fffffff || a.n > 0x7fffffff || a.k < 0 || a.k > a.n)
    return cudaErrorInvalidValue;
  if (a.rows > 0 && a.n > 0 && (a.x == nullptr || a.values == nullptr || a.kept == nullptr))
    return cudaErrorInvalidValue;
  if (a.dtype != DType::kFloat32 && a.dtype != DType::kFloat16 && a.dtype != DType::kBFloat16)
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

template <typename Launch>
cudaError_t abs_topk_sequence(const AbsTopkArgs& a, Launch&& launch) {
  if (const cudaError_t err = abs_topk_check(a); err != cudaSuccess) return err;
  if (a.rows == 0 || a.n == 0) return cudaSuccess;
  auto run = [&]<class Key>() -> cudaError_t {
    using Bits = typename Key::BitsType;
    const AbsTopkParams<Bits> p{static_cast<const Bits*>(a.x), static_cast<Bits*>(a.values), a.kept, a.n, a.k};
    return launch(abs_topk_kernel<Key>, Grid{a.rows, 1}, kAbsTopkThreads, p);
  };
  switch (a.dtype) {
    case DType::kFloat32:
      return run.template operator()<AbsTopkKeyF32>();
    case DType::kFloat16:
      return run.template operator()<AbsTopkKeyF16>();
    default:
      return run.template operator()<AbsTopkKeyBF16>();
  }
}

}  // namespace cuda
}  // namespace sparsekern

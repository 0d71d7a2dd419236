// Kernels of the read-only part of the CUDA top-k projection, in launch order: init, then per
// 8-bit digit a histogram and a pick, then per-CTA tie counts and their scan.
#pragma once

#include "topk_common.cuh"

namespace sparsekern {
namespace cuda {

// state = [prefix or cutoff key, ties to keep]; the histogram starts zeroed.
__global__ void __launch_bounds__(kTopkThreads)
    topk_init_kernel(int64_t* state, unsigned long long* hist, int64_t k, int64_t forced_key) {
  for (int b = threadIdx.x; b < kTopkBins; b += kTopkThreads) hist[b] = 0;
  // k = 0: a cutoff no key exceeds and no tie slot, so nothing is kept (F is then empty).
  if (threadIdx.x == 0) {
    state[0] = k == 0 ? forced_key : 0;
    state[1] = k;
  }
}

// 256-bin histogram of the digit at `shift`, over the keys whose higher digits equal the
// prefix chosen so far (state[0]); per CTA in shared memory, then added into hist.
template <typename Bits>
__global__ void __launch_bounds__(kTopkThreads)
    topk_hist_kernel(const TopkParams<Bits> p, const int64_t* state, unsigned long long* hist, int shift) {
  __shared__ unsigned int bins[kTopkBins];
  const int tid = threadIdx.x;
  for (int b = tid; b < kTopkBins; b += kTopkThreads) bins[b] = 0;
  __syncthreads();
  const TopkSpan s = topk_span(p);
  const bool first = shift + 8 >= TopkKey<Bits>::kBits;  // no higher digit yet
  const uint32_t prefix = static_cast<uint32_t>(state[0]);
  for (int64_t c = s.c0 + tid; c < s.c1; c += kTopkThreads) {
    Bits raw;
    const uint32_t key = topk_key(p, s.row, c, &raw);
    if (first || (key >> (shift + 8)) == prefix) atomicAdd(&bins[(key >> shift) & 255u], 1u);
  }
  __syncthreads();
  for (int b = tid; b < kTopkBins; b += kTopkThreads)
    if (bins[b] != 0) atomicAdd(&hist[b], static_cast<unsigned long long>(bins[b]));
}

// One CTA: the digit holding the state[1]-th largest key. Afterwards state[0] has gained the
// digit and state[1] counts from the top of it; hist is zeroed for the next digit.
__global__ void __launch_bounds__(kTopkThreads) topk_pick_kernel(int64_t* state, unsigned long long* hist) {
  __shared__ unsigned long long h[kTopkBins];
  const int tid = threadIdx.x;
  for (int b = tid; b < kTopkBins; b += kTopkThreads) h[b] = hist[b];
  __syncthreads();
  if (tid == 0) {
    const int64_t remaining = state[1];
    int64_t above = 0;
    int digit = 0;
    for (int d = kTopkBins - 1; d >= 0; --d) {
      const int64_t n = static_cast<int64_t>(h[d]);
      if (above + n >= remaining) {
        digit = d;
        break;
      }
      above += n;
    }
    state[0] = state[0] * kTopkBins + digit;
    state[1] = remaining - above;
  }
  for (int b = tid; b < kTopkBins; b += kTopkThreads) hist[b] = 0;
}

// Per CTA: how many keys equal the cutoff, into ties_before[b + 1] (scanned next).
template <typename Bits>
__global__ void __launch_bounds__(kTopkThreads)
    topk_ties_kernel(const TopkParams<Bits> p, const int64_t* state, int64_t* ties_before) {
  __shared__ unsigned int count;
  const int tid = threadIdx.x;
  if (tid == 0) count = 0;
  __syncthreads();
  const TopkSpan s = topk_span(p);
  const uint32_t cutoff = static_cast<uint32_t>(state[0]);
  unsigned int mine = 0;
  for (int64_t c = s.c0 + tid; c < s.c1; c += kTopkThreads) {
    Bits raw;
    mine += topk_key(p, s.row, c, &raw) == cutoff;
  }
  if (mine != 0) atomicAdd(&count, mine);
  __syncthreads();
  if (tid == 0) {
    ties_before[blockIdx.x + 1] = count;
    if (blockIdx.x == 0) ties_before[0] = 0;
  }
}

// One CTA: in-place inclusive scan of ties_before[1..n], which makes ties_before[b] the
// ties in the CTAs before b (row-major) and ties_before[n] their total.
__global__ void __launch_bounds__(kTopkThreads) topk_scan_kernel(int64_t* ties_before, int64_t n) {
  __shared__ int64_t s[kTopkThreads];
  int64_t carry = 0;
  for (int64_t base = 0; base < n; base += kTopkThreads) {
    const int64_t i = base + threadIdx.x;
    int64_t total;
    const int64_t incl = topk_block_scan<int64_t>(i < n ? ties_before[1 + i] : 0, s, &total);
    if (i < n) ties_before[1 + i] = carry + incl;
    carry += total;
  }
}

// ------------------------------------------------------------------ launch sequence

inline cudaError_t topk_select_check(const TopkSelectArgs& a) {
  if (!topk_shape_ok(a.w, a.rows, a.cols, a.ld_r, a.ld_c) || a.k < 0 || a.k > a.rows * a.cols ||
      a.state == nullptr || a.hist == nullptr || a.ties_before == nullptr)
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

template <typename Launch>
cudaError_t topk_select_sequence(const TopkSelectArgs& a, Launch&& launch) {
  auto run = [&]<typename Bits>() -> cudaError_t {
    const TopkParams<Bits> p = topk_params<Bits>(a.w, a.forced, a.rows, a.cols, a.ld_r, a.ld_c);
    const int64_t ctas = a.rows * p.chunks;
    cudaError_t err = launch(topk_init_kernel, int64_t{1}, a.state, a.hist, a.k,
                             static_cast<int64_t>(TopkKey<Bits>::kMask));
    if (a.k > 0) {
      for (int shift = TopkKey<Bits>::kBits - 8; shift >= 0 && err == cudaSuccess; shift -= 8) {
        err = launch(topk_hist_kernel<Bits>, ctas, p, static_cast<const int64_t*>(a.state), a.hist, shift);
        if (err == cudaSuccess) err = launch(topk_pick_kernel, int64_t{1}, a.state, a.hist);
      }
    }
    if (err == cudaSuccess)
      err = launch(topk_ties_kernel<Bits>, ctas, p, static_cast<const int64_t*>(a.state), a.ties_before);
    if (err == cudaSuccess) err = launch(topk_scan_kernel, int64_t{1}, a.ties_before, ctas);
    return err;
  };
  return a.keys == TopkKeys::k32 ? run.template operator()<uint32_t>() : run.template operator()<uint16_t>();
}

}  // namespace cuda
}  // namespace sparsekern

// Sampled dense-dense kernel for the weight gradient of the element format: for every entry
// (n, k) of the row-major index, dW[n, k] = sum over m of g[m, n] * x[m, k]; nothing else.
//
// esmm_dw_kernel: the same CTA shape as the forward (esmm_fwd_kernel.cuh): TM rows of the
// batch (128 in fp16/bf16, 64 in fp32) and FG = warps x kDwFeaturesPerWarp consecutive rows n
// of dW, each warp owning kDwFeaturesPerWarp of them. The CTA stages g's [TM x FG] tile once
// and x in chunks of kDwChunk columns, both transposed (lanes along M, esmm_common.cuh). Work
// is dealt by nonzeros, not rows: each warp queues the entries of its features that fall in
// the chunk, whatever row they come from (a row holding half the nonzeros only fills more
// queues), and for each 32 queued entries every lane forms its kPerLane products for each of
// them (a g word and an x word per entry), then one butterfly reduce-scatter (31 shuffles for
// the 32 entries, not 5 each; 5 each for 4 entries or fewer) leaves lane t with entry t's sum over the TM rows, which it adds
// into the fp32 scratch `sums` (one atomic per entry and CTA row of tiles). A chunk's queue is
// emptied before the next chunk is staged.
//
// esmm_scatter_kernel then rounds `sums` into the dense dW once (one warp per row); the
// caller zero-fills dW, so entries off the layout are exact zeros.
//
// Sizes are untuned (no GPU has run this kernel): 8 warps, 8 features a warp (64 a CTA), 96
// columns a chunk (about 45 KB of static shared memory). One atomic per entry and TM rows of
// the batch: likely the first thing to tune (more rows per CTA) once a GPU can time it.
#pragma once

#include "esmm_common.cuh"

namespace sparsekern {
namespace cuda {

constexpr int kDwFeaturesPerWarp = 8;
constexpr int kDwChunk = 96;  // columns of x per staged tile

template <typename T, typename Ptr>
struct EsmmDwParams {
  const T* g;
  const T* x;
  float* sums;  // nnz, zeroed by the caller
  const Ptr* ptr;
  const int32_t* idx;
  int64_t nnz, M, N, K;
  int64_t sgm, sgn, sxm, sxk;
};

// One step of reduce_scatter: lanes that differ in bit S swap halves of v[0, 2S) and add, so
// that each keeps the sums of the half its bit S selects.
template <int S>
__device__ __forceinline__ void butterfly_step(float (&v)[32], int lane) {
  const bool upper = (lane & S) != 0;
#pragma unroll
  for (int i = 0; i < S; ++i) {
    const float send = upper ? v[i] : v[i + S];
    const float keep = upper ? v[i + S] : v[i];
    v[i] = keep + __shfl_xor_sync(kFullMask, send, S);
  }
}

// v[0..31] per lane in; out: the sum over the warp's lanes of v[lane] (31 shuffles in all).
__device__ __forceinline__ float reduce_scatter(float (&v)[32], int lane) {
  butterfly_step<16>(v, lane);
  butterfly_step<8>(v, lane);
  butterfly_step<4>(v, lane);
  butterfly_step<2>(v, lane);
  butterfly_step<1>(v, lane);
  return v[0];
}

template <typename T, typename Ptr>
__global__ void __launch_bounds__(kEsmmThreads, 2) esmm_dw_kernel(const EsmmDwParams<T, Ptr> p) {
  constexpr int F = kDwFeaturesPerWarp, FG = kEsmmWarps * F, KC = kDwChunk;
  constexpr int TM = Words<T>::kRows, V = Words<T>::kPerLane;
  static_assert(KC * kTilePitch < 65536 && FG * kTilePitch < 65536, "queued offsets are 16-bit");
  __shared__ uint32_t g_tile[FG * kTilePitch];
  __shared__ uint32_t x_tile[KC * kTilePitch];
  __shared__ uint32_t queue_offsets[kEsmmWarps][32];  // x tile offset | g tile offset << 16
  __shared__ int64_t queue_positions[kEsmmWarps][32];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * FG;
  const int64_t nw = n0 + warp * F;
  const int m_lim = static_cast<int>(p.M - m0 < TM ? p.M - m0 : TM);

  int64_t cur = 0, end = 0;  // lane f < F: cursor and end of feature nw + f
  if (lane < F && nw + lane < p.N) segment(p.ptr, nw + lane, p.nnz, cur, end);
  if (!__syncthreads_or(cur < end)) return;  // no entry in the CTA's rows of dW
  stage_tile<T, FG>(g_tile, p.g, p.sgm, p.sgn, m0, n0, m_lim, static_cast<int>(p.N - n0 < FG ? p.N - n0 : FG), tid);

  uint32_t* offsets = queue_offsets[warp];
  int64_t* positions = queue_positions[warp];
  // The first `count` queued entries: lane t adds entry t's sum over the tile's rows.
  auto flush = [&](int count) {
    __syncwarp();
    float part[32];
#pragma unroll
    for (int t = 0; t < 32; ++t) {
      part[t] = 0.0f;
      if (t < count) {
        const uint32_t o = offsets[t];
        float xv[V], gv[V];
        lane_values<T>(x_tile + (o & 0xffffu), lane, xv);
        lane_values<T>(g_tile + (o >> 16), lane, gv);
#pragma unroll
        for (int i = 0; i < V; ++i) part[t] = fmaf(gv[i], xv[i], part[t]);
      }
    }
    if (count <= 4) {  // a few entries (low densities): 5 shuffles each beat the 31 of reduce_scatter
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        if (t < count) {
          float sum = part[t];
#pragma unroll
          for (int s = 16; s >= 1; s /= 2) sum += __shfl_xor_sync(kFullMask, sum, s);
          if (lane == t) atomicAdd(p.sums + positions[t], sum);
        }
      }
    } else {
      const float sum = reduce_scatter(part, lane);
      if (lane < count) atomicAdd(p.sums + positions[lane], sum);
    }
    __syncwarp();
  };

  int queued = 0;  // warp-uniform
  for (int64_t k0 = 0; k0 < p.K; k0 += KC) {
    const int k_hi = static_cast<int>(p.K - k0 < KC ? p.K : k0 + KC);
    const unsigned work = __ballot_sync(kFullMask, cur < end && p.idx[cur] < k_hi);
    if (!__syncthreads_or(work != 0)) continue;
    stage_tile<T, KC>(x_tile, p.x, p.sxm, p.sxk, m0, k0, m_lim, k_hi - static_cast<int>(k0), tid);
    __syncthreads();
    for (int f = 0; f < F; ++f) {
      if (!((work >> f) & 1u)) continue;  // warp-uniform
      const uint32_t g_offset = static_cast<uint32_t>((warp * F + f) * kTilePitch) << 16;
      const int64_t q = __shfl_sync(kFullMask, cur, f), e = __shfl_sync(kFullMask, end, f);
      const int64_t next = walk_chunk(p.idx, q, e, static_cast<int>(k0), k_hi, lane,
                                      [&](int, bool use, int col, int64_t j) {
        const unsigned used = __ballot_sync(kFullMask, use);
        const int slot = queued + __popc(used & ((1u << lane) - 1u));
        const uint32_t offset = static_cast<uint32_t>((col - static_cast<int>(k0)) * kTilePitch) | g_offset;
        if (use && slot < 32) {
          offsets[slot] = offset;
          positions[slot] = j;
        }
        queued += __popc(used);
        if (queued >= 32) {
          flush(32);
          queued -= 32;
          if (use && slot >= 32) {
            offsets[slot - 32] = offset;
            positions[slot - 32] = j;
          }
        }
      });
      if (lane == f) cur = next;
    }
    if (queued > 0) flush(queued);  // its entries point into this chunk's tile
    queued = 0;
    __syncthreads();  // before the next chunk overwrites the tile
  }
}

template <typename T, typename Ptr>
struct EsmmScatterParams {
  const float* sums;
  T* out;
  const Ptr* ptr;
  const int32_t* idx;
  int64_t nnz, N, K;
  int64_t swn, swk;
};

template <typename T, typename Ptr>
__global__ void __launch_bounds__(kEsmmThreads) esmm_scatter_kernel(const EsmmScatterParams<T, Ptr> p) {
  for_each_entry(p.ptr, p.idx, p.nnz, p.N, p.K, [&](int64_t n, int64_t j, int32_t k) {
    p.out[n * p.swn + k * p.swk] = from_float<T>(p.sums[j]);
  });
}

}  // namespace cuda
}  // namespace sparsekern

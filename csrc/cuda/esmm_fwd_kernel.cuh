// Dense x element-sparse kernels: out[M, N] = a[M, K] @ B[K, N] (+ bias), B listed per column n
// (an output feature) by a compressed index. The forward pass (B = weight.T, the row-major
// index) and the input gradient (B = weight, the transposed index) are this one kernel; see
// esmm_cuda.h for the two mappings.
//
// esmm_gather_kernel first packs B's values in index order (one warp per feature), so that the
// product reads them coalesced with the index: a weight is dense [out, in] with its nonzeros
// scattered, and the input gradient walks it down its columns.
//
// esmm_fwd_kernel: one CTA owns TM rows of out (128 in fp16/bf16, 64 in fp32; see
// esmm_common.cuh) and FG = warps x kFwdFeaturesPerWarp consecutive features; each warp owns
// kFwdFeaturesPerWarp of them and each lane the kPerLane rows of its tile words, so a thread
// accumulates kFwdFeaturesPerWarp x kPerLane outputs in registers (fp32), over the whole
// reduction. `a` is read in chunks of kFwdChunk columns, staged transposed in shared memory
// (a chunk no feature of the CTA has an entry in is skipped). Per chunk and feature, the warp
// loads up to 32 entries at once (lane i: entry i, its value and tile offset), and broadcasts
// them one by one with a shuffle (one shuffle per entry in fp16/bf16: offset and value share a
// word); every lane then reads its words of that column and does kPerLane FMAs. Why lanes
// along M: all 32 lanes use the same entry, so no lane waits on another's row length, and the
// gathered column of `a` is one conflict-free shared-memory read; a row-major `a` read with
// lanes along M straight from global memory would touch 32 rows per load.
// The outputs leave through shared memory (the tile, reused), rounded once to the output
// dtype with the bias added, and are written row by row (coalesced along N).
//
// Sizes are untuned (no GPU has run this kernel): 8 warps, 16 features a warp (128 a CTA),
// 128 columns a chunk (33 KB of static shared memory).
#pragma once

#include "esmm_common.cuh"

namespace sparsekern {
namespace cuda {

constexpr int kFwdFeaturesPerWarp = 16;
constexpr int kFwdChunk = 128;  // columns of `a` per staged tile

template <typename T, typename Ptr>
struct EsmmGatherParams {
  const T* b;
  T* packed;
  const Ptr* ptr;
  const int32_t* idx;
  int64_t nnz, n_outer, n_inner;
  int64_t s_outer, s_inner;  // B's value of entry (o, i) at b[o * s_outer + i * s_inner]
};

template <typename T, typename Ptr>
__global__ void __launch_bounds__(kEsmmThreads) esmm_gather_kernel(const EsmmGatherParams<T, Ptr> p) {
  for_each_entry(p.ptr, p.idx, p.nnz, p.n_outer, p.n_inner, [&](int64_t o, int64_t j, int32_t i) {
    p.packed[j] = p.b[o * p.s_outer + i * p.s_inner];
  });
}

template <typename T, typename Ptr>
struct EsmmFwdParams {
  const T* a;
  const T* packed;  // B's values in index order (esmm_gather_kernel)
  const T* bias;    // may be null
  T* out;
  const Ptr* ptr;
  const int32_t* idx;
  int64_t nnz, M, K, N;
  int64_t sam, sak, som, son, sbias;
};

// An entry as one lane hands it to the others: its column's word offset in the tile and its
// value; fp16/bf16 pack both in one word (one shuffle), fp32 takes two.
template <typename T>
struct Broadcast {
  uint32_t word;  // fp16/bf16: offset | value bits << 16; fp32: offset
  float value32;  // fp32 only

  __device__ __forceinline__ static Broadcast make(uint32_t offset, T value) {
    if constexpr (sizeof(T) == 2) {
      uint16_t bits;
      memcpy(&bits, &value, sizeof bits);
      return {offset | static_cast<uint32_t>(bits) << 16, 0.0f};
    } else {
      return {offset, to_float(value)};
    }
  }
  __device__ __forceinline__ Broadcast from(int lane) const {
    if constexpr (sizeof(T) == 2) {
      return {__shfl_sync(kFullMask, word, lane), 0.0f};
    } else {
      return {__shfl_sync(kFullMask, word, lane), __shfl_sync(kFullMask, value32, lane)};
    }
  }
  __device__ __forceinline__ uint32_t offset() const { return sizeof(T) == 2 ? word & 0xffffu : word; }
  __device__ __forceinline__ float value() const {
    if constexpr (sizeof(T) == 2) {
      const uint16_t bits = static_cast<uint16_t>(word >> 16);
      T v;
      memcpy(&v, &bits, sizeof bits);
      return to_float(v);
    } else {
      return value32;
    }
  }
};

template <typename T, typename Ptr>
__global__ void __launch_bounds__(kEsmmThreads, 2) esmm_fwd_kernel(const EsmmFwdParams<T, Ptr> p) {
  constexpr int F = kFwdFeaturesPerWarp, FG = kEsmmWarps * F, KC = kFwdChunk;
  constexpr int TM = Words<T>::kRows, V = Words<T>::kPerLane, PW = Words<T>::kPerWord;
  constexpr int YP = FG + PW;  // output tile row pitch in elements: an odd number of words
  constexpr int kTile = KC * kTilePitch, kOut = TM * YP / PW;
  static_assert(KC * kTilePitch < 65536, "tile offsets must fit the 16 bits Broadcast gives them");
  __shared__ uint32_t smem[kTile > kOut ? kTile : kOut];  // the staged tile of a, then the output tile

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * FG;
  const int64_t nw = n0 + warp * F;  // this warp's first feature
  const int m_lim = static_cast<int>(p.M - m0 < TM ? p.M - m0 : TM);

  // Lane f < F keeps the cursor (next entry) and the end of feature nw + f.
  int64_t cur = 0, end = 0;
  if (lane < F && nw + lane < p.N) segment(p.ptr, nw + lane, p.nnz, cur, end);

  float acc[F][V];
#pragma unroll
  for (int f = 0; f < F; ++f)
#pragma unroll
    for (int i = 0; i < V; ++i) acc[f][i] = 0.0f;

  for (int64_t k0 = 0; k0 < p.K; k0 += KC) {
    const int k_hi = static_cast<int>(p.K - k0 < KC ? p.K : k0 + KC);
    // Which of this warp's features have entries in the chunk; none in the CTA: skip it.
    const unsigned work = __ballot_sync(kFullMask, cur < end && p.idx[cur] < k_hi);
    if (!__syncthreads_or(work != 0)) continue;
    stage_tile<T, KC>(smem, p.a, p.sam, p.sak, m0, k0, m_lim, k_hi - static_cast<int>(k0), tid);
    __syncthreads();
#pragma unroll
    for (int f = 0; f < F; ++f) {
      if (!((work >> f) & 1u)) continue;  // warp-uniform
      const int64_t q = __shfl_sync(kFullMask, cur, f), e = __shfl_sync(kFullMask, end, f);
      const int64_t next = walk_chunk(p.idx, q, e, static_cast<int>(k0), k_hi, lane,
                                      [&](int n, bool use, int col, int64_t j) {
        const Broadcast<T> mine = Broadcast<T>::make(use ? (col - static_cast<int>(k0)) * kTilePitch : 0,
                                                     use ? p.packed[j] : from_float<T>(0.0f));
        for (int t = 0; t < n; ++t) {
          const Broadcast<T> entry = mine.from(t);
          float x[V];
          lane_values<T>(smem + entry.offset(), lane, x);
          const float v = entry.value();
#pragma unroll
          for (int i = 0; i < V; ++i) acc[f][i] = fmaf(v, x[i], acc[f][i]);
        }
      });
      if (lane == f) cur = next;
    }
    __syncthreads();  // before the next chunk overwrites the tile
  }

  // Epilogue: bias, one rounding, through the output tile [TM][YP] (row r = m - m0).
  __syncthreads();
  T* tile = reinterpret_cast<T*>(smem);
#pragma unroll
  for (int f = 0; f < F; ++f) {
    const int64_t n = nw + f;
    const float b = p.bias != nullptr && n < p.N ? to_float(p.bias[n * p.sbias]) : 0.0f;
#pragma unroll
    for (int i = 0; i < V; ++i) tile[lane_row<T>(lane, i) * YP + warp * F + f] = from_float<T>(acc[f][i] + b);
  }
  __syncthreads();
  const int n_lim = static_cast<int>(p.N - n0 < FG ? p.N - n0 : FG);
  for (int i = tid; i < TM * FG; i += kEsmmThreads) {
    const int r = i / FG, c = i % FG;
    if (r < m_lim && c < n_lim) p.out[(m0 + r) * p.som + (n0 + c) * p.son] = tile[r * YP + c];
  }
}

}  // namespace cuda
}  // namespace sparsekern

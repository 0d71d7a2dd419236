// What the element-sparse kernels share (esmm_fwd_kernel.cuh, esmm_dw_kernel.cuh): the CTA
// shape, the shared-memory tiles of a dense operand (transposed, so that lanes run along the
// batch dimension M), the warp walk over one feature's entries inside a chunk of columns, and
// the one-warp-per-row kernels' loop.
//
// The dense operand a[M, C] (x, or grad_out for the input gradient) is read in chunks of
// columns; a tile holds, for each column c of the chunk, TM consecutive rows m packed into
// 32-bit words: two rows a word in fp16/bf16, one in fp32, 64 words a column (two per lane:
// words lane and lane + 32), so TM = 128 (fp16/bf16) or 64 (fp32). All 32 lanes of a warp
// then read the same column at once, one word each: 32 distinct banks, no conflict, and each
// word feeds one (fp32) or two (fp16/bf16) FMAs per entry. The column pitch is 65 words
// (odd), so the stores of the staging pass, whose lanes run along c (coalesced reads of a
// row-major operand), fall in distinct banks too.
#pragma once

#include <cstdint>
#include <cstring>

#include "convert.cuh"

#ifndef SPARSEKERN_ESMM_WARPS
#define SPARSEKERN_ESMM_WARPS 8  // warps per CTA; the host emulation also builds smaller CTAs
#endif

namespace sparsekern {
namespace cuda {

constexpr int kEsmmWarps = SPARSEKERN_ESMM_WARPS;
constexpr int kEsmmThreads = 32 * kEsmmWarps;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kTileWords = 64;              // words per tile column: two per lane
constexpr int kTilePitch = kTileWords + 1;  // words between tile columns

template <typename T>
struct Words {
  static constexpr int kPerWord = 4 / static_cast<int>(sizeof(T));  // rows m per word
  static constexpr int kRows = kTileWords * kPerWord;                // TM
  static constexpr int kPerLane = 2 * kPerWord;                      // rows m per lane
};

// Tile row (m - m0) of lane `lane`'s value v < kPerLane: word lane + 32 (v / kPerWord), half v % kPerWord.
template <typename T>
__device__ __forceinline__ int lane_row(int lane, int v) {
  constexpr int PW = Words<T>::kPerWord;
  return (lane + 32 * (v / PW)) * PW + v % PW;
}

// The kPerLane values of lane `lane` in one tile column (words lane and lane + 32), as floats.
template <typename T>
__device__ __forceinline__ void lane_values(const uint32_t* column, int lane, float (&v)[Words<T>::kPerLane]) {
  constexpr int PW = Words<T>::kPerWord;
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    const uint32_t word = column[lane + 32 * s];
    T parts[PW];
    memcpy(parts, &word, sizeof word);
#pragma unroll
    for (int h = 0; h < PW; ++h) v[s * PW + h] = to_float(parts[h]);
  }
}

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Positions [begin, end) of outer index o's entries, clamped inside [0, nnz).
template <typename Ptr>
__device__ __forceinline__ void segment(const Ptr* ptr, int64_t o, int64_t nnz, int64_t& begin, int64_t& end) {
  begin = clamp64(ptr[o], 0, nnz);
  end = clamp64(ptr[o + 1], begin, nnz);
}

// Fills tile[c * kTilePitch + w] (c < C, w < kTileWords) with rows m0 + w * kPerWord + h of
// column c0 + c of `a` (element (m, c) at a[m * sm + c * sc]); zero past m_lim rows or c_lim
// columns. Lanes run along c: coalesced for a row-major operand, conflict-free stores.
template <typename T, int C>
__device__ __forceinline__ void stage_tile(uint32_t* tile, const T* a, int64_t sm, int64_t sc, int64_t m0,
                                           int64_t c0, int m_lim, int c_lim, int tid) {
  constexpr int PW = Words<T>::kPerWord;
  for (int i = tid; i < C * kTileWords; i += kEsmmThreads) {
    const int c = i % C, w = i / C;
    T parts[PW];
#pragma unroll
    for (int h = 0; h < PW; ++h) {
      const int r = w * PW + h;
      parts[h] = r < m_lim && c < c_lim ? a[(m0 + r) * sm + (c0 + c) * sc] : from_float<T>(0.0f);
    }
    uint32_t word;
    memcpy(&word, parts, sizeof word);
    tile[c * kTilePitch + w] = word;
  }
}

// Walks the entries of one feature whose columns lie in the chunk [k0, k_hi), from position q
// up to `end` (both warp-uniform; columns ascend, so they are a run): in batches of up to 32,
// lane i holding entry q + i. For each batch it calls batch(n, use, col, j): the batch's first
// n lanes hold entries inside the chunk; `use` says that this lane's is one of them and not
// below k0 (always, in a valid index); col and j are its column and position. Returns the
// position after the chunk's run. All 32 lanes call it together.
template <class Batch>
__device__ __forceinline__ int64_t walk_chunk(const int32_t* idx, int64_t q, int64_t end, int k0, int k_hi, int lane,
                                              Batch&& batch) {
  while (q < end) {
    const int64_t j = q + lane;
    const int col = j < end ? idx[j] : k_hi;
    const unsigned stop = __ballot_sync(kFullMask, col >= k_hi);
    const int n = stop ? __ffs(stop) - 1 : 32;
    batch(n, lane < n && col >= k0, col, j);
    q += n;
    if (n < 32) break;
  }
  return q;
}

// One warp per outer index o < n_outer (kEsmmWarps per CTA), its lanes striding over o's
// entries: body(o, j, inner) for each entry whose inner index lies in [0, n_inner). The
// gather and scatter kernels around the products.
template <typename Ptr, class Body>
__device__ __forceinline__ void for_each_entry(const Ptr* ptr, const int32_t* idx, int64_t nnz, int64_t n_outer,
                                               int64_t n_inner, Body&& body) {
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kEsmmWarps + threadIdx.x / 32;
  if (o >= n_outer) return;
  int64_t begin, end;
  segment(ptr, o, nnz, begin, end);
  for (int64_t j = begin + threadIdx.x % 32; j < end; j += 32) {
    const int32_t inner = idx[j];
    if (inner >= 0 && inner < n_inner) body(o, j, inner);
  }
}

}  // namespace cuda
}  // namespace sparsekern

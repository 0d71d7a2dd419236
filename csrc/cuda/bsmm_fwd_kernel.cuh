// Dense x block-sparse kernel: out[M, N] = a[M, K] @ B[K, N] (+ bias), B block-sparse.
// Used for the forward pass (B = weight.T, row-major index) and for the input gradient
// (B = weight, the transposed index): one kernel, two products.
//
// One CTA computes a TM x TN tile of out: TM rows of a, and TN columns inside one block
// column j of B (TN divides block_n). It walks the blocks listed for column j; each block
// contributes block_k / TK pipeline steps of depth TK. The steps of all blocks form one
// flat sequence, so the cp.async pipeline runs across block boundaries.
#pragma once

#include "../common/block_index.h"
#include "tile.cuh"

namespace sparsekern {
namespace cuda {

constexpr int kFwdTileM = 64;  // rows of out per CTA

template <typename T>
struct FwdParams {
  const T* a;
  const T* b;
  const T* bias;
  T* out;
  const int32_t* ptr;
  const int32_t* idx;
  int64_t nnz, M, K, N;
  int64_t sam, sak, sbk, sbn, som, son, sbias;
  int block_k, block_n;
  bool a_vec, b_vec;  // 16-byte cp.async allowed (see GlobalTile)
};

template <Mode MODE, int TN, bool B_KCONTIG>
__global__ void __launch_bounds__(TileMma<MODE, kFwdTileM, TN, true, B_KCONTIG>::THREADS, kMinBlocks)
    bsmm_fwd_kernel(const FwdParams<typename ModeTraits<MODE>::T> p) {
  using Tile = TileMma<MODE, kFwdTileM, TN, true, B_KCONTIG>;
  using T = typename Tile::T;
  constexpr int TM = Tile::TM, TK = Tile::TK;
  __shared__ __align__(16) typename Tile::Smem sm;

  const int tid = threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * TM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * TN;
  const int64_t j = n0 / p.block_n;  // block column of B
  // Blocks of column j; the range is clamped to the index so that a malformed pointer
  // array cannot make the kernel read outside idx.
  int64_t begin = index::segment_begin(p.ptr, j), end = index::segment_end(p.ptr, j);
  begin = begin < 0 ? 0 : (begin > p.nnz ? p.nnz : begin);
  end = end < begin ? begin : (end > p.nnz ? p.nnz : end);
  const int steps_per_block = p.block_k / TK;
  const int nsteps = static_cast<int>(end - begin) * steps_per_block;

  const int m_lim = tile_limit(p.M, m0, TM);
  const int n_lim = tile_limit(p.N, n0, TN);

  auto load = [&](int step, int stage) {
    const int64_t kb = p.idx[begin + step / steps_per_block];  // block row of B
    const int64_t k0 = index::block_start(kb, p.block_k) + (step % steps_per_block) * TK;
    // k0 < 0 only for a malformed index: treat as an empty tile rather than read before b.
    const int k_lim = kb < 0 ? 0 : tile_limit(p.K, k0, TK);
    const int64_t kc = k_lim > 0 ? k0 : 0;  // no address is formed from an empty tile
    GlobalTile<T> a{p.a + m0 * p.sam + kc * p.sak, p.sam, p.sak, m_lim, k_lim, p.a_vec};
    GlobalTile<T> b;
    if constexpr (B_KCONTIG) {
      b = GlobalTile<T>{p.b + kc * p.sbk + n0 * p.sbn, p.sbn, p.sbk, n_lim, k_lim, p.b_vec};
    } else {
      b = GlobalTile<T>{p.b + kc * p.sbk + n0 * p.sbn, p.sbk, p.sbn, k_lim, n_lim, p.b_vec};
    }
    Tile::load_stage(sm, stage, a, b, tid);
  };

  float acc[Tile::ACC];  // zeroed by mainloop
  Tile::mainloop(sm, acc, nsteps, tid, load);

  Tile::for_each_output(acc, tid, [&](int r, int c, float v) {
    if (r < m_lim && c < n_lim) {
      if (p.bias != nullptr) v += to_float(p.bias[(n0 + c) * p.sbias]);
      p.out[(m0 + r) * p.som + (n0 + c) * p.son] = from_float<T>(v);
    }
  });
}

}  // namespace cuda
}  // namespace sparsekern

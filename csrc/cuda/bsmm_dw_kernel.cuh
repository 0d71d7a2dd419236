// Sampled dense-dense kernel for the weight gradient: dW = grad_out[M, N].T @ x[M, K],
// computed on the active blocks only.
//
// One CTA computes a T x T piece of one active block (T = min(block sides, 64); a block
// has (block_out / T) x (block_in / T) pieces), reducing over a range of the batch rows:
// all of them, or 1/splits of them when there are too few blocks to fill the GPU, in
// which case the pieces are atomically added into an fp32 output.
#pragma once

#include "../common/block_index.h"
#include "tile.cuh"

namespace sparsekern {
namespace cuda {

template <typename T>
struct DwParams {
  const T* g;
  const T* x;
  void* out;  // T*, or float* when atomic
  const int32_t* block_row;
  const int32_t* col_idx;
  int64_t M, N, K;
  int64_t sgm, sgn, sxm, sxk, swn, swk;
  int block_out, block_in;
  int splits;
  bool atomic;
  bool g_vec, x_vec;
};

template <Mode MODE, int TS>
__global__ void __launch_bounds__(TileMma<MODE, TS, TS, false, false>::THREADS, kMinBlocks)
    bsmm_dw_kernel(const DwParams<typename ModeTraits<MODE>::T> p) {
  // The product's "A" is grad_out.T (rows: output features n, contraction: batch m), stored
  // [m][n] in shared memory as grad_out is n-contiguous; "B" is x, stored [m][k].
  using Tile = TileMma<MODE, TS, TS, false, false>;
  using T = typename Tile::T;
  constexpr int TK = Tile::TK;
  __shared__ __align__(16) typename Tile::Smem sm;

  const int tid = threadIdx.x;
  const int pieces_in = p.block_in / TS;
  const int pieces = (p.block_out / TS) * pieces_in;
  const int64_t blk = blockIdx.x / pieces;
  const int piece = blockIdx.x % pieces;
  const int64_t br = p.block_row[blk], bc = p.col_idx[blk];
  if (br < 0 || bc < 0) return;  // malformed index: read nothing
  const int64_t n0 = index::block_start(br, p.block_out) + (piece / pieces_in) * TS;
  const int64_t k0 = index::block_start(bc, p.block_in) + (piece % pieces_in) * TS;
  const int n_lim = tile_limit(p.N, n0, TS);
  const int k_lim = tile_limit(p.K, k0, TS);
  if (n_lim == 0 || k_lim == 0) return;  // a piece of a partial edge block that lies outside dW

  // This CTA's share of the batch, in steps of TK rows.
  const int64_t total = (p.M + TK - 1) / TK;
  const int64_t per = (total + p.splits - 1) / p.splits;
  const int64_t s_begin = blockIdx.y * per;
  const int64_t s_end = s_begin + per < total ? s_begin + per : total;
  const int nsteps = s_end > s_begin ? static_cast<int>(s_end - s_begin) : 0;

  auto load = [&](int step, int stage) {
    const int64_t m = (s_begin + step) * TK;
    const int m_lim = tile_limit(p.M, m, TK);
    const GlobalTile<T> a{p.g + m * p.sgm + n0 * p.sgn, p.sgm, p.sgn, m_lim, n_lim, p.g_vec};
    const GlobalTile<T> b{p.x + m * p.sxm + k0 * p.sxk, p.sxm, p.sxk, m_lim, k_lim, p.x_vec};
    Tile::load_stage(sm, stage, a, b, tid);
  };

  float acc[Tile::ACC];  // zeroed by mainloop
  Tile::mainloop(sm, acc, nsteps, tid, load);

  Tile::for_each_output(acc, tid, [&](int r, int c, float v) {
    if (r < n_lim && c < k_lim) {
      const int64_t off = (n0 + r) * p.swn + (k0 + c) * p.swk;
      if (p.atomic) {
        atomicAdd(static_cast<float*>(p.out) + off, v);
      } else {
        static_cast<T*>(p.out)[off] = from_float<T>(v);
      }
    }
  });
}

}  // namespace cuda
}  // namespace sparsekern

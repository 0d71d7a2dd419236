// Launch plans, host side: which kernel variant serves a call, its parameters and its grid.
// Shared by the launchers (bsmm_fwd.cu, bsmm_dw.cu) and by the host emulation of the kernels
// (tests/cuda_host/), which therefore run exactly the same choices.
#pragma once

#include <cstdint>

#include "../common/block_index.h"
#include "bsmm_cuda.h"
#include "bsmm_dw_kernel.cuh"
#include "bsmm_fwd_kernel.cuh"

namespace sparsekern {
namespace cuda {


// The shared tile side used for a block side: the whole block up to 64, else 64-wide pieces.
inline int tile_side(int block_side) { return block_side < 64 ? block_side : 64; }

using index::ceil_div;
using index::valid_block_side;

// The 16-byte cp.async path needs the contiguous dimension to have stride 1 and every
// row start (base + r * ld_r) to be 16-byte aligned.
inline bool vec_ok(const void* p, int64_t ld_r, int64_t ld_c, int elem_bytes) {
  return ld_c == 1 && reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld_r * elem_bytes) % 16 == 0;
}

// The kernel variant for a dtype: fp32 goes through TF32 tensor cores only when allowed.
inline Mode mode_of(DType dtype, bool allow_tf32) {
  switch (dtype) {
    case DType::kBFloat16:
      return Mode::kBF16;
    case DType::kFloat16:
      return Mode::kF16;
    default:
      return allow_tf32 ? Mode::kTF32 : Mode::kF32;
  }
}

// ---------------------------------------------------------------- forward / input gradient

// cudaSuccess when the call can run (possibly as a no-op), else why not.
inline cudaError_t fwd_check(const FwdArgs& a) {
  if (!valid_block_side(a.block_k) || !valid_block_side(a.block_n) || a.M < 0 || a.K < 0 || a.N < 0 || a.nnz < 0) {
    return cudaErrorInvalidValue;
  }
  if (ceil_div(a.M, kFwdTileM) > 0x7fffffff || ceil_div(a.N, tile_side(a.block_n)) > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  return cudaSuccess;
}

inline bool fwd_empty(const FwdArgs& a) { return a.M == 0 || a.N == 0; }

template <typename T, bool B_KCONTIG>
FwdParams<T> fwd_params(const FwdArgs& a) {
  const int eb = sizeof(T);
  FwdParams<T> p;
  p.a = static_cast<const T*>(a.a);
  p.b = static_cast<const T*>(a.b);
  p.bias = static_cast<const T*>(a.bias);
  p.out = static_cast<T*>(a.out);
  p.ptr = a.ptr;
  p.idx = a.idx;
  p.nnz = a.nnz;
  p.M = a.M;
  p.K = a.K;
  p.N = a.N;
  p.sam = a.sam;
  p.sak = a.sak;
  p.sbk = a.sbk;
  p.sbn = a.sbn;
  p.som = a.som;
  p.son = a.son;
  p.sbias = a.sbias;
  p.block_k = a.block_k;
  p.block_n = a.block_n;
  p.a_vec = vec_ok(a.a, a.sam, a.sak, eb);
  p.b_vec = B_KCONTIG ? vec_ok(a.b, a.sbn, a.sbk, eb) : vec_ok(a.b, a.sbk, a.sbn, eb);
  return p;
}

// One CTA per kFwdTileM rows x TN columns of out.
template <int TN>
Grid fwd_grid(const FwdArgs& a) {
  return {ceil_div(a.M, kFwdTileM), ceil_div(a.N, TN)};
}

// Calls run.template operator()<MODE, TN, B_KCONTIG>() for the variant serving `a`: the
// mode of the dtype, TN = the tile side of block_n, and shared B tiles that keep the
// dimension contiguous in memory contiguous (k when sbk == 1).
template <Mode MODE, int TN, class Run>
cudaError_t fwd_layout(const FwdArgs& a, Run& run) {
  return a.sbk == 1 ? run.template operator()<MODE, TN, true>() : run.template operator()<MODE, TN, false>();
}

template <Mode MODE, class Run>
cudaError_t fwd_tile(const FwdArgs& a, Run& run) {
  switch (tile_side(a.block_n)) {
    case 16:
      return fwd_layout<MODE, 16>(a, run);
    case 32:
      return fwd_layout<MODE, 32>(a, run);
    default:
      return fwd_layout<MODE, 64>(a, run);
  }
}

template <class Run>
cudaError_t dispatch_fwd(const FwdArgs& a, Run&& run) {
  switch (mode_of(a.dtype, a.allow_tf32)) {
    case Mode::kBF16:
      return fwd_tile<Mode::kBF16>(a, run);
    case Mode::kF16:
      return fwd_tile<Mode::kF16>(a, run);
    case Mode::kTF32:
      return fwd_tile<Mode::kTF32>(a, run);
    default:
      return fwd_tile<Mode::kF32>(a, run);
  }
}

// ------------------------------------------------------------------------ weight gradient

inline int dw_tile_side(const DwArgs& a) { return tile_side(a.block_out < a.block_in ? a.block_out : a.block_in); }

inline cudaError_t dw_check(const DwArgs& a) {
  if (!valid_block_side(a.block_out) || !valid_block_side(a.block_in) || a.M < 0 || a.N < 0 || a.K < 0 || a.nnz < 0 ||
      a.splits < 1 || a.splits > 65535) {
    return cudaErrorInvalidValue;
  }
  const int ts = dw_tile_side(a);
  if (a.nnz * (a.block_out / ts) * (a.block_in / ts) > 0x7fffffff) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

inline bool dw_empty(const DwArgs& a) { return a.nnz == 0 || a.N == 0 || a.K == 0; }

template <typename T>
DwParams<T> dw_params(const DwArgs& a) {
  const int eb = sizeof(T);
  DwParams<T> p;
  p.g = static_cast<const T*>(a.g);
  p.x = static_cast<const T*>(a.x);
  p.out = a.out;
  p.block_row = a.block_row;
  p.col_idx = a.col_idx;
  p.M = a.M;
  p.N = a.N;
  p.K = a.K;
  p.sgm = a.sgm;
  p.sgn = a.sgn;
  p.sxm = a.sxm;
  p.sxk = a.sxk;
  p.swn = a.swn;
  p.swk = a.swk;
  p.block_out = a.block_out;
  p.block_in = a.block_in;
  p.splits = a.splits;
  p.atomic = a.splits > 1;
  p.g_vec = vec_ok(a.g, a.sgm, a.sgn, eb);
  p.x_vec = vec_ok(a.x, a.sxm, a.sxk, eb);
  return p;
}

// One CTA per TS x TS piece of each active block (x) and per share of the batch (y).
template <int TS>
Grid dw_grid(const DwArgs& a) {
  return {a.nnz * (a.block_out / TS) * (a.block_in / TS), a.splits};
}

// Calls run.template operator()<MODE, TS>() for the variant serving `a`.
template <Mode MODE, class Run>
cudaError_t dw_tile(const DwArgs& a, Run& run) {
  switch (dw_tile_side(a)) {
    case 16:
      return run.template operator()<MODE, 16>();
    case 32:
      return run.template operator()<MODE, 32>();
    default:
      return run.template operator()<MODE, 64>();
  }
}

template <class Run>
cudaError_t dispatch_dw(const DwArgs& a, Run&& run) {
  switch (mode_of(a.dtype, a.allow_tf32)) {
    case Mode::kBF16:
      return dw_tile<Mode::kBF16>(a, run);
    case Mode::kF16:
      return dw_tile<Mode::kF16>(a, run);
    case Mode::kTF32:
      return dw_tile<Mode::kTF32>(a, run);
    default:
      return dw_tile<Mode::kF32>(a, run);
  }
}

// ------------------------------------------------------------------ launch sequences
// What a launcher does, with the launch itself left to `launch(kernel, grid, threads, params)`:
// a CUDA launch on a stream in bsmm_fwd.cu / bsmm_dw.cu, an emulated one in tests/cuda_host/.

template <typename Launch>
cudaError_t launch_fwd(const FwdArgs& a, Launch&& launch) {
  if (const cudaError_t err = fwd_check(a); err != cudaSuccess) return err;
  if (fwd_empty(a)) return cudaSuccess;
  return dispatch_fwd(a, [&]<Mode MODE, int TN, bool B_KCONTIG>() {
    using Tile = TileMma<MODE, kFwdTileM, TN, true, B_KCONTIG>;
    return launch(bsmm_fwd_kernel<MODE, TN, B_KCONTIG>, fwd_grid<TN>(a), Tile::THREADS,
                  fwd_params<typename Tile::T, B_KCONTIG>(a));
  });
}

template <typename Launch>
cudaError_t launch_dw(const DwArgs& a, Launch&& launch) {
  if (const cudaError_t err = dw_check(a); err != cudaSuccess) return err;
  if (dw_empty(a)) return cudaSuccess;
  return dispatch_dw(a, [&]<Mode MODE, int TS>() {
    using Tile = TileMma<MODE, TS, TS, false, false>;
    return launch(bsmm_dw_kernel<MODE, TS>, dw_grid<TS>(a), Tile::THREADS, dw_params<typename Tile::T>(a));
  });
}

}  // namespace cuda
}  // namespace sparsekern

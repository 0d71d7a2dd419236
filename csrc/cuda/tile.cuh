// CTA-level tile product shared by the forward and weight-gradient kernels:
//   C[TM x TN] += sum over steps of A_s[TM x TK] * B_s[TK x TN]
// with A_s and B_s streamed from global memory into a STAGES-deep shared-memory ring
// (cp.async), and the product done on tensor cores (bf16/fp16: mma m16n8k16 fed by
// ldmatrix; fp32 with TF32 allowed: mma m16n8k8 .tf32) or with plain fp32 FMAs.
//
// Shared-memory tiles store one dimension contiguously: A is [TM][TK] ("K-contiguous")
// or [TK][TM]; B is [TN][TK] ("K-contiguous") or [TK][TN]. The kernel picks the layout
// matching the operand's contiguous dimension in global memory, so a 16-byte cp.async
// copies 8 (16-bit) or 4 (fp32) consecutive elements. Every row is padded by 16 bytes:
// the row pitch is then an odd multiple of 16 bytes, so the 8 row addresses of an
// ldmatrix (and of a cp.async row group) fall in 8 distinct 4-bank groups.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "convert.cuh"
#include "fragments.h"
#ifndef SPARSEKERN_HOST_EMULATION
#include "mma.cuh"  // else tests/cuda_host/device_shim.h, included first, models these on the CPU
#endif

namespace sparsekern {
namespace cuda {

// How the inner product is computed; chosen at run time by the launchers from the dtype
// and the TF32 flag, then fixed at compile time for each kernel.
enum class Mode { kBF16, kF16, kTF32, kF32 };

template <Mode M>
struct ModeTraits;
template <>
struct ModeTraits<Mode::kBF16> {
  using T = __nv_bfloat16;
};
template <>
struct ModeTraits<Mode::kF16> {
  using T = __half;
};
template <>
struct ModeTraits<Mode::kTF32> {
  using T = float;
};
template <>
struct ModeTraits<Mode::kF32> {
  using T = float;
};


// A global operand tile: element (r, c) of the tile (r along the shared tile's rows, c
// along its contiguous columns) is at ptr[r * ld_r + c * ld_c]; it exists only for
// r < r_lim and c < c_lim (limits may be <= 0: an all-zero tile). `vec` says that
// ld_c == 1 and that ptr and ld_r * sizeof(T) are 16-byte aligned (checked by the launcher
// for the whole tensor; tile origins are multiples of 16 elements along c).
template <typename T>
struct GlobalTile {
  const T* ptr;
  int64_t ld_r, ld_c;
  int r_lim, c_lim;
  bool vec;
};

// How many of the `tile` elements starting at `start` lie below `extent`: the edge mask of
// a tile side (0 for a tile wholly outside, e.g. past the edge of a partial edge block).
__device__ __forceinline__ int tile_limit(int64_t extent, int64_t start, int tile) {
  const int64_t left = extent - start;
  return left < tile ? static_cast<int>(left < 0 ? 0 : left) : tile;
}

// Copies an R x C tile into shared memory (row pitch LD elements), zero outside the limits.
// The 16-byte path issues cp.async (completed by cp_async_wait); the fallback (unaligned or
// strided operand) uses ordinary loads and stores, complete when the thread moves on.
template <typename T, int R, int C, int LD, int THREADS>
__device__ __forceinline__ void load_tile(T* __restrict__ s, const GlobalTile<T>& g, int tid) {
  if (g.vec) {
    constexpr int CH = 16 / sizeof(T);  // elements per 16-byte chunk
    constexpr int CPR = C / CH;         // chunks per row
    static_assert(C % CH == 0, "tile rows must be whole 16-byte chunks");
#pragma unroll
    for (int it = 0; it < (R * CPR + THREADS - 1) / THREADS; ++it) {
      const int i = tid + it * THREADS;
      if (i >= R * CPR) break;
      const int r = i / CPR;
      const int c = (i % CPR) * CH;
      int n = g.c_lim - c;  // valid elements in this chunk
      n = n < 0 ? 0 : (n > CH ? CH : n);
      if (r >= g.r_lim) n = 0;
      T* dst = s + r * LD + c;
      if (n > 0) {
        cp_async_16(dst, g.ptr + r * g.ld_r + c, n * static_cast<int>(sizeof(T)));
      } else {
        // Nothing to read: no global address is formed at all.
        *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
      }
    }
  } else {
#pragma unroll 4
    for (int it = 0; it < (R * C + THREADS - 1) / THREADS; ++it) {
      const int i = tid + it * THREADS;
      if (i >= R * C) break;
      const int r = i / C;
      const int c = i % C;
      T v = from_float<T>(0.0f);
      if (r < g.r_lim && c < g.c_lim) v = g.ptr[r * g.ld_r + c * g.ld_c];
      s[r * LD + c] = v;
    }
  }
}

// Second argument of __launch_bounds__. Without it ptxas aimed at 72 registers for some
// tiles and spilled a few bytes; asking for 2 resident CTAs per SM lets it use what it needs.
constexpr int kMinBlocks = 2;

// The tile product. A_KCONTIG / B_KCONTIG select the shared layouts described above.
template <Mode MODE, int TM_, int TN_, bool A_KCONTIG, bool B_KCONTIG>
struct TileMma {
  using T = typename ModeTraits<MODE>::T;
  static constexpr int TM = TM_, TN = TN_;
  static constexpr int TK = 16;  // contraction depth of one pipeline stage
  static constexpr int WARPS_M = TM >= 32 ? 2 : 1;
  static constexpr int WARPS_N = TN >= 32 ? 2 : 1;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int WM = TM / WARPS_M;  // warp tile
  static constexpr int WN = TN / WARPS_N;
  static constexpr int MT = WM / 16;  // m16 tiles per warp
  static constexpr int NT = WN / 8;   // n8 tiles per warp
  static constexpr int PAD = 16 / sizeof(T);
  static constexpr int A_ROWS = A_KCONTIG ? TM : TK, A_LD = (A_KCONTIG ? TK : TM) + PAD;
  static constexpr int B_ROWS = B_KCONTIG ? TN : TK, B_LD = (B_KCONTIG ? TK : TN) + PAD;
  static constexpr int A_STAGE = A_ROWS * A_LD, B_STAGE = B_ROWS * B_LD;  // elements
  static constexpr int STAGES = sizeof(T) == 2 ? 4 : 3;
  static constexpr bool kMma = MODE != Mode::kF32;
  // Plain fp32: each thread owns RM x 4 outputs, rows strided by THREADS_M, columns by THREADS_N.
  static constexpr int THREADS_N = TN / 4, THREADS_M = THREADS / THREADS_N, RM = TM / THREADS_M;
  static constexpr int ACC = kMma ? MT * NT * 4 : RM * 4;  // accumulator registers per thread

  static_assert(TM % 16 == 0 && TN % 16 == 0 && WM % 16 == 0 && WN % 16 == 0, "tile sides multiple of 16");
  static_assert(THREADS % THREADS_N == 0 && TM % THREADS_M == 0, "fp32 thread mapping");

  struct Smem {
    T a[STAGES * A_STAGE];
    T b[STAGES * B_STAGE];
  };

  // Element (m, k) of stage A and (k, n) of stage B, whatever the layout.
  static __device__ __forceinline__ const T& a_at(const T* sa, int m, int k) {
    return A_KCONTIG ? sa[m * A_LD + k] : sa[k * A_LD + m];
  }
  static __device__ __forceinline__ const T& b_at(const T* sb, int k, int n) {
    return B_KCONTIG ? sb[n * B_LD + k] : sb[k * B_LD + n];
  }

  static __device__ __forceinline__ void load_stage(Smem& sm, int stage, const GlobalTile<T>& a,
                                                    const GlobalTile<T>& b, int tid) {
    load_tile<T, A_ROWS, A_KCONTIG ? TK : TM, A_LD, THREADS>(sm.a + stage * A_STAGE, a, tid);
    load_tile<T, B_ROWS, B_KCONTIG ? TK : TN, B_LD, THREADS>(sm.b + stage * B_STAGE, b, tid);
  }

  // acc += A_stage * B_stage for this thread's outputs.
  static __device__ __forceinline__ void compute_stage(const Smem& sm, int stage, float (&acc)[ACC], int tid) {
    const T* sa = sm.a + stage * A_STAGE;
    const T* sb = sm.b + stage * B_STAGE;
    const int lane = tid % 32, warp = tid / 32;
    const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
    if constexpr (MODE == Mode::kBF16 || MODE == Mode::kF16) {
      // One k16 step per stage (TK == 16).
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int m = wm0 + i * 16;
        if constexpr (A_KCONTIG) {
          const frag::RowCol rc = frag::ldsm_a_mk(lane);  // stored [m][k]
          ldmatrix_x4(af[i], &sa[(m + rc.row) * A_LD + rc.col]);
        } else {
          const frag::RowCol rc = frag::ldsm_a_km(lane);  // stored [k][m]
          ldmatrix_x4_trans(af[i], &sa[rc.row * A_LD + m + rc.col]);
        }
      }
#pragma unroll
      for (int j = 0; j < NT; j += 2) {  // two n8 tiles per ldmatrix.x4
        const int n = wn0 + j * 8;
        uint32_t r[4];
        if constexpr (B_KCONTIG) {
          const frag::RowCol rc = frag::ldsm_b_nk(lane);  // stored [n][k]
          ldmatrix_x4(r, &sb[(n + rc.row) * B_LD + rc.col]);
        } else {
          const frag::RowCol rc = frag::ldsm_b_kn(lane);  // stored [k][n]
          ldmatrix_x4_trans(r, &sb[rc.row * B_LD + n + rc.col]);
        }
        bf[j][0] = r[0];      // n tile j,     k 0..7
        bf[j][1] = r[1];      // n tile j,     k 8..15
        bf[j + 1][0] = r[2];  // n tile j + 1, k 0..7
        bf[j + 1][1] = r[3];  // n tile j + 1, k 8..15
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_16816<T>(acc_tile(acc, i, j), af[i], bf[j]);
    } else if constexpr (MODE == Mode::kTF32) {
      // ldmatrix moves 16-bit elements only, so fp32 fragments are read element by element.
#pragma unroll
      for (int k = 0; k < TK; k += 8) {
        uint32_t af[MT][4], bf[NT][2];
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const frag::RowCol mk = frag::tf32_a(lane, e);
            af[i][e] = to_tf32(a_at(sa, wm0 + i * 16 + mk.row, k + mk.col));
          }
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const frag::RowCol kn = frag::tf32_b(lane, e);
            bf[j][e] = to_tf32(b_at(sb, k + kn.row, wn0 + j * 8 + kn.col));
          }
#pragma unroll
        for (int i = 0; i < MT; ++i)
#pragma unroll
          for (int j = 0; j < NT; ++j) mma_1688_tf32(acc_tile(acc, i, j), af[i], bf[j]);
      }
    } else {
      // Plain fp32: exact fp32 products and fp32 sums, in k order.
      const int tm = tid / THREADS_N, tn = tid % THREADS_N;
#pragma unroll 4
      for (int k = 0; k < TK; ++k) {
        float a[RM], b[4];
#pragma unroll
        for (int i = 0; i < RM; ++i) a[i] = a_at(sa, tm + i * THREADS_M, k);
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = b_at(sb, k, tn + j * THREADS_N);
#pragma unroll
        for (int i = 0; i < RM; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i * 4 + j] = fmaf(a[i], b[j], acc[i * 4 + j]);
      }
    }
  }

  // The 4 accumulators of mma tile (i, j), see the C/D layout in mma.cuh.
  static __device__ __forceinline__ float (&acc_tile(float (&acc)[ACC], int i, int j))[4] {
    return *reinterpret_cast<float(*)[4]>(&acc[(i * NT + j) * 4]);
  }

  // Calls f(r, c, value) for each accumulator of this thread; (r, c) is within the tile.
  template <class F>
  static __device__ __forceinline__ void for_each_output(const float (&acc)[ACC], int tid, F&& f) {
    if constexpr (kMma) {
      const int lane = tid % 32, warp = tid / 32;
      const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const frag::RowCol mn = frag::acc(lane, e);
            f(wm0 + i * 16 + mn.row, wn0 + j * 8 + mn.col, acc[(i * NT + j) * 4 + e]);
          }
    } else {
      const int tm = tid / THREADS_N, tn = tid % THREADS_N;
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) f(tm + i * THREADS_M, tn + j * THREADS_N, acc[i * 4 + j]);
    }
  }

  // Runs the pipelined main loop over steps [0, nsteps): load(step, stage) fills a stage
  // (through load_stage), then every stage is multiplied in order into acc, zeroed first.
  template <class L>
  static __device__ __forceinline__ void mainloop(Smem& sm, float (&acc)[ACC], int nsteps, int tid, L&& load) {
#pragma unroll
    for (int i = 0; i < ACC; ++i) acc[i] = 0.0f;  // the product starts from zero
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < nsteps) load(s, s);
      cp_async_commit();  // possibly empty: keeps the group count uniform
    }
    for (int step = 0; step < nsteps; ++step) {
      // Groups committed so far: STAGES - 1 + step; leaving STAGES - 2 in flight means the
      // group of `step` is done for this thread; the barrier makes every thread's copies
      // visible and guarantees the stage overwritten below was consumed in step - 1.
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      const int next = step + STAGES - 1;
      if (next < nsteps) load(next, next % STAGES);
      cp_async_commit();
      compute_stage(sm, step % STAGES, acc, tid);
    }
    cp_async_wait<0>();
  }
};

}  // namespace cuda
}  // namespace sparsekern

// Lane -> element coordinates of the warp-level tensor-core operations, kept apart from
// the kernels and free of CUDA so that a host program (tests/cuda_host/fragments_check.cpp)
// replays them against an independent model of ldmatrix and mma.sync (PTX ISA) on the CPU.
//
// Conventions (see mma.cuh for the fragment layouts): a 16 x 16 A tile (m, k), a 16 x 16
// B tile (k, n) covering two n8 mma tiles, a 16 x 8 C tile (m, n). "Stored [x][y]" means
// the shared-memory tile has y contiguous.
#pragma once

#if defined(__CUDACC__)
#define SK_FRAG_HD __host__ __device__ __forceinline__
#else
#define SK_FRAG_HD inline
#endif

namespace sparsekern {
namespace cuda {
namespace frag {

struct RowCol {
  int row, col;
};

// ldmatrix.x4 row addresses: lane l points at row (l % 8) of matrix q = l / 8. Each
// function returns, for a lane, the (stored row, stored column) its address points at,
// chosen so that matrix q becomes fragment register q.

// A stored [m][k], plain ldmatrix: matrix q = rows m 8 (q % 2).., columns k 8 (q / 2)..
SK_FRAG_HD RowCol ldsm_a_mk(int lane) { return {lane & 15, (lane >> 4) * 8}; }

// A stored [k][m], ldmatrix.trans: matrix q = stored rows k 8 (q / 2).., columns m 8 (q % 2)..
SK_FRAG_HD RowCol ldsm_a_km(int lane) { return {(lane & 7) + (lane >> 4) * 8, ((lane >> 3) & 1) * 8}; }

// B stored [n][k], plain ldmatrix: matrix q = rows n 8 (q / 2).., columns k 8 (q % 2)..
// (registers 0, 1: n tile 0; registers 2, 3: n tile 1).
SK_FRAG_HD RowCol ldsm_b_nk(int lane) { return {(lane & 7) + (lane >> 4) * 8, ((lane >> 3) & 1) * 8}; }

// B stored [k][n], ldmatrix.trans: matrix q = stored rows k 8 (q % 2).., columns n 8 (q / 2)..
SK_FRAG_HD RowCol ldsm_b_kn(int lane) { return {lane & 15, (lane >> 4) * 8}; }

// tf32 m16n8k8 fragments read element by element: A element i of a lane as (m, k),
// B element i as (k, n).
SK_FRAG_HD RowCol tf32_a(int lane, int i) { return {lane / 4 + (i & 1) * 8, lane % 4 + (i >> 1) * 4}; }
SK_FRAG_HD RowCol tf32_b(int lane, int i) { return {lane % 4 + i * 4, lane / 4}; }

// Accumulator element i (0..3) of a lane as (m, n), for both mma shapes.
SK_FRAG_HD RowCol acc(int lane, int i) { return {lane / 4 + (i >> 1) * 8, 2 * (lane % 4) + (i & 1)}; }

}  // namespace frag
}  // namespace cuda
}  // namespace sparsekern

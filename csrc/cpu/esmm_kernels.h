// The CPU element-sparse kernels, written once and compiled once per instruction set
// (esmm_portable.cpp, esmm_avx2.cpp, esmm_avx512.cpp; see bsmm_kernels.h for the rules such a
// unit follows: no C++ standard library header, internal linkage but for the entry points).
//
// Both products work through M in tiles of MT rows (MT = VL * NV lanes). A tile of the dense
// operand is transposed once into scratch shared by all threads, so that a row of it holds one
// column of the operand for MT rows of M: each nonzero of the weight then costs NV vector FMAs
// against one contiguous row, whatever its column. The rows are read in no useful order, so
// the tile must stay in L2: MT is chosen so that it takes about a quarter of it.
#include <stdint.h>

#include "esmm_cpu.h"
#include "simd.h"

namespace sparsekern {
namespace cpu {
namespace SK_KERNELS_NS {

// Rows of M per tile for a dense operand `width` columns wide, its transposed tile at most
// tile_bytes (the launcher's choice, from the L2 size) unless one vector is wider.
int64_t element_tile_rows(int64_t width, int64_t tile_bytes);
// y over the tiles of M; vals[j] is the weight's value of nonzero j (packed by the launcher);
// at (n_in x MT floats) is scratch.
void element_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for, int64_t tile_bytes,
                          const float* vals, float* at);
// dw; xt (k x MT), dyt (n x MT) and sums (nnz) are scratch.
void element_sampled(const ElementSampled& p, ParallelFor parallel_for, int64_t tile_bytes, float* xt, float* dyt,
                     float* sums);

namespace {

inline int tile_vectors(int64_t width, int64_t tile_bytes) {
  int nv = 8;
  while (nv > 1 && width * nv * VL * static_cast<int64_t>(sizeof(float)) > tile_bytes) nv /= 2;
  return nv;
}

inline int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }

// t[c * mt + r] = a[r * lda + c0 + c] for c < cols; rows >= `rows` (a partial tile) are zeros.
inline void transpose_rows(const float* a, int64_t lda, int64_t rows, int64_t c0, int64_t cols, float* t,
                           int64_t mt) {
  int64_t c = 0;
  if (rows == mt)
    for (; c + VL <= cols; c += VL)
      for (int64_t r = 0; r < mt; r += VL) transpose_tile(a + r * lda + c0 + c, lda, t + c * mt + r, mt);
  for (; c < cols; ++c) {
    for (int64_t r = 0; r < rows; ++r) t[c * mt + r] = a[r * lda + c0 + c];
    for (int64_t r = rows; r < mt; ++r) t[c * mt + r] = 0.f;
  }
}

// Columns [begin, end) of a tile of the dense operand, transposed into shared scratch.
struct TransposeTask {
  const float* a;
  int64_t lda, rows, mt;
  float* t;
};

void transpose_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const TransposeTask*>(ctx);
  transpose_rows(c.a, c.lda, c.rows, begin, end - begin, c.t + begin * c.mt, c.mt);
}

inline void transpose_tile_of(const float* a, int64_t lda, int64_t rows, int64_t cols, float* t, int64_t mt,
                              ParallelFor parallel_for) {
  TransposeTask task{a, lda, rows, mt, t};
  parallel_for(cols, transpose_task, &task);
}

// ------------------------------------------------------------------ dense x element-sparse
template <int NV>
struct ForwardTask {
  const ElementDenseSparse* p;
  const float* vals;
  const float* at;  // the tile, transposed: [n_in][MT]
  int64_t m0, rows;
};

// Outputs [begin, end) of one tile: VL outputs at a time, each accumulated over its nonzeros
// in NV vectors (one per VL rows of M), then written to y through a register transpose.
template <int NV>
void forward_task(void* ctx, int64_t begin, int64_t end) {
  constexpr int64_t MT = NV * VL;
  const auto& c = *static_cast<const ForwardTask<NV>*>(ctx);
  const ElementDenseSparse& p = *c.p;
  alignas(64) float buf[VL * MT];  // [output][row of the tile]
  for (int64_t n0 = begin; n0 < end; n0 += VL) {
    const int64_t outs = lesser(VL, end - n0);
    for (int64_t i = 0; i < outs; ++i) {
      const int64_t n = n0 + i;
      Vec acc[NV];
      const float bias = p.bias ? p.bias[n] : 0.f;
      for (int v = 0; v < NV; ++v) acc[v] = vbroadcast(&bias);
      for (int64_t j = p.ptr[n]; j < p.ptr[n + 1]; ++j) {
        const Vec w = vbroadcast(c.vals + j);
        const float* row = c.at + static_cast<int64_t>(p.idx[j]) * MT;
        for (int v = 0; v < NV; ++v) acc[v] = vfma(w, vload(row + v * VL), acc[v]);
      }
      for (int v = 0; v < NV; ++v) vstore(buf + i * MT + v * VL, acc[v]);
    }
    float* y = p.y + c.m0 * p.ldy + n0;
    if (outs == VL && c.rows == MT) {
      for (int v = 0; v < NV; ++v) transpose_tile(buf + v * VL, MT, y + v * VL * p.ldy, p.ldy);
    } else {
      for (int64_t r = 0; r < c.rows; ++r)
        for (int64_t i = 0; i < outs; ++i) y[r * p.ldy + i] = buf[i * MT + r];
    }
  }
}

template <int NV>
void dense_sparse_tiles(const ElementDenseSparse& p, ParallelFor parallel_for, const float* vals, float* at) {
  constexpr int64_t MT = NV * VL;
  for (int64_t m0 = 0; m0 < p.m; m0 += MT) {
    const int64_t rows = lesser(MT, p.m - m0);
    transpose_tile_of(p.a + m0 * p.lda, p.lda, rows, p.w.cols, at, MT, parallel_for);
    ForwardTask<NV> task{&p, vals, at, m0, rows};
    parallel_for(p.w.rows, forward_task<NV>, &task);
  }
}

// ------------------------------------------------------------------ sampled dense-dense
template <int NV>
struct SampledTask {
  const ElementSampled* p;
  const float* xt;  // x's tile, transposed: [k][MT]
  float* dyt;       // dy's tile, transposed: [n][MT] (each task its own rows)
  float* sums;      // [nnz]: each nonzero's sum over the tiles so far
  int64_t m0, rows;
};

// Rows [begin, end) of dw for one tile: dy's column n (MT rows) held in NV vectors, dotted
// with x's column of every nonzero of row n.
template <int NV>
void sampled_task(void* ctx, int64_t begin, int64_t end) {
  constexpr int64_t MT = NV * VL;
  const auto& c = *static_cast<const SampledTask<NV>*>(ctx);
  const ElementSampled& p = *c.p;
  float* dyt = c.dyt + begin * MT;
  transpose_rows(p.dy + c.m0 * p.ldd, p.ldd, c.rows, begin, end - begin, dyt, MT);
  for (int64_t n = begin; n < end; ++n) {
    Vec d[NV];
    for (int v = 0; v < NV; ++v) d[v] = vload(dyt + (n - begin) * MT + v * VL);
    for (int64_t j = p.ptr[n]; j < p.ptr[n + 1]; ++j) {
      const float* row = c.xt + static_cast<int64_t>(p.idx[j]) * MT;
      Vec s = vzero();
      for (int v = 0; v < NV; ++v) s = vfma(d[v], vload(row + v * VL), s);
      c.sums[j] += vsum(s);
    }
  }
}

struct ScatterTask {
  const ElementSampled* p;
  const float* sums;
};

// Rows [begin, end) of dw: zeros, then each nonzero's sum.
void scatter_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ScatterTask*>(ctx);
  const ElementSampled& p = *c.p;
  for (int64_t n = begin; n < end; ++n) {
    float* row = p.dw + n * p.ldw;
    __builtin_memset(row, 0, static_cast<unsigned long>(p.k) * sizeof(float));
    for (int64_t j = p.ptr[n]; j < p.ptr[n + 1]; ++j) row[p.idx[j]] = c.sums[j];
  }
}

template <int NV>
void sampled_tiles(const ElementSampled& p, ParallelFor parallel_for, float* xt, float* dyt, float* sums) {
  constexpr int64_t MT = NV * VL;
  for (int64_t j = 0; j < p.nnz; ++j) sums[j] = 0.f;
  for (int64_t m0 = 0; m0 < p.m && p.nnz > 0; m0 += MT) {
    const int64_t rows = lesser(MT, p.m - m0);
    transpose_tile_of(p.x + m0 * p.ldx, p.ldx, rows, p.k, xt, MT, parallel_for);
    SampledTask<NV> task{&p, xt, dyt, sums, m0, rows};
    parallel_for(p.n, sampled_task<NV>, &task);
  }
  ScatterTask scatter{&p, sums};
  parallel_for(p.n, scatter_task, &scatter);
}

}  // namespace

int64_t element_tile_rows(int64_t width, int64_t tile_bytes) {
  return static_cast<int64_t>(tile_vectors(width, tile_bytes)) * VL;
}

void element_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for, int64_t tile_bytes,
                          const float* vals, float* at) {
  switch (tile_vectors(p.w.cols, tile_bytes)) {
    case 8: dense_sparse_tiles<8>(p, parallel_for, vals, at); break;
    case 4: dense_sparse_tiles<4>(p, parallel_for, vals, at); break;
    case 2: dense_sparse_tiles<2>(p, parallel_for, vals, at); break;
    default: dense_sparse_tiles<1>(p, parallel_for, vals, at); break;
  }
}

void element_sampled(const ElementSampled& p, ParallelFor parallel_for, int64_t tile_bytes, float* xt, float* dyt,
                     float* sums) {
  switch (tile_vectors(p.k, tile_bytes)) {
    case 8: sampled_tiles<8>(p, parallel_for, xt, dyt, sums); break;
    case 4: sampled_tiles<4>(p, parallel_for, xt, dyt, sums); break;
    case 2: sampled_tiles<2>(p, parallel_for, xt, dyt, sums); break;
    default: sampled_tiles<1>(p, parallel_for, xt, dyt, sums); break;
  }
}

}  // namespace SK_KERNELS_NS
}  // namespace cpu
}  // namespace sparsekern

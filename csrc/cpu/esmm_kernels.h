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

// The tile of M and the chunk of the reduction for a dense operand `width` columns wide: NV
// (in [min_nv, max_nv], powers of 2 up to 8) vectors of M, as many as keep a transposed tile
// within tile_bytes; a chunk of the width that keeps it there at that NV (the whole width if it fits).
void element_plan(int64_t width, int64_t tile_bytes, int min_nv, int max_nv, int64_t* mt, int64_t* chunk);
// y = a @ w.T over the tiles of M as `plan` says; vals[j] is the weight's value of nonzero j.
void element_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for, const ElementPlan& plan,
                          const float* vals);
// dw over tiles of mt rows of M (element_plan's, for x's width k, unchunked); xt (k x mt),
// dyt (n x mt) and sums (nnz) are scratch.
void element_sampled(const ElementSampled& p, ParallelFor parallel_for, int64_t mt, float* xt, float* dyt,
                     float* sums);

namespace {

// Vectors of M per tile: at most max_nv, at least min_nv, as many as keep a transposed tile of
// `width` columns within tile_bytes.
inline int tile_vectors(int64_t width, int64_t tile_bytes, int min_nv, int max_nv) {
  int nv = max_nv;
  while (nv > min_nv && width * nv * VL * static_cast<int64_t>(sizeof(float)) > tile_bytes) nv /= 2;
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

// Columns c0 + [0, cols) of the tile of rows m0 + [0, rows) of p's dense operand, as rows of t.
inline void load_tile(const ElementDenseSparse& p, int64_t m0, int64_t rows, int64_t c0, int64_t cols, float* t,
                      int64_t mt) {
  transpose_rows(p.a + m0 * p.lda, p.lda, rows, c0, cols, t, mt);
}

// Columns c0 + [begin, end) of a tile of the dense operand, into shared scratch.
struct TileTask {
  const ElementDenseSparse* p;
  int64_t m0, rows, c0, mt;
  float* t;
};

void tile_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const TileTask*>(ctx);
  load_tile(*c.p, c.m0, c.rows, c.c0 + begin, end - begin, c.t + begin * c.mt, c.mt);
}

// Columns [begin, end) of one tile of x (the sampled product's operand), transposed.
struct TransposeTask {
  const float* a;
  int64_t lda, rows, c0, mt;
  float* t;
};

void transpose_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const TransposeTask*>(ctx);
  transpose_rows(c.a, c.lda, c.rows, c.c0 + begin, end - begin, c.t + begin * c.mt, c.mt);
}

inline void transpose_tile_of(const float* a, int64_t lda, int64_t rows, int64_t c0, int64_t cols, float* t,
                              int64_t mt, ParallelFor parallel_for) {
  TransposeTask task{a, lda, rows, c0, mt, t};
  parallel_for(cols, transpose_task, &task);
}

// ------------------------------------------------------------------ dense x element-sparse
// One chunk q of the reduction for outputs [n_begin, n_end) of one tile: VL outputs at a time,
// each accumulated over its nonzeros in the chunk in NV vectors (one per VL rows of M). The
// running sums wait in yt ([n_out][MT]) between chunks; after the last, they go to y through a
// register transpose.
template <int NV>
void tile_chunk(const ElementDenseSparse& p, const ElementPlan& plan, const float* vals, const float* at, float* yt,
                int64_t m0, int64_t rows, int64_t q, int64_t n_begin, int64_t n_end) {
  constexpr int64_t MT = NV * VL;
  const bool first = q == 0, last = q == plan.chunks - 1;
  const int64_t c0 = q * plan.chunk, stride = plan.chunks + 1;
  alignas(64) float buf[VL * MT];  // [output][row of the tile]
  for (int64_t n0 = n_begin; n0 < n_end; n0 += VL) {
    const int64_t outs = lesser(VL, n_end - n0);
    for (int64_t i = 0; i < outs; ++i) {
      const int64_t n = n0 + i;
      // S sets of NV accumulators take turns by nonzero, so that at least 8 independent FMA
      // chains are in flight (an FMA's latency times the FMAs a core starts per cycle): with
      // one set, NV = 2 waited on its own results and ran at a fifth of the FMA rate.
      constexpr int S = NV >= 8 ? 1 : 8 / NV;
      Vec acc[S][NV];
      if (first) {
        const float bias = p.bias ? p.bias[n] : 0.f;
        for (int v = 0; v < NV; ++v) acc[0][v] = vbroadcast(&bias);
      } else {
        for (int v = 0; v < NV; ++v) acc[0][v] = vload(yt + n * MT + v * VL);
      }
      for (int s = 1; s < S; ++s)
        for (int v = 0; v < NV; ++v) acc[s][v] = vzero();
      const int64_t j0 = plan.split ? plan.split[n * stride + q] : p.ptr[n];
      const int64_t j1 = plan.split ? plan.split[n * stride + q + 1] : p.ptr[n + 1];
      int64_t j = j0;
      for (; j + S <= j1; j += S) {
        for (int s = 0; s < S; ++s) {
          const Vec w = vbroadcast(vals + j + s);
          const float* row = at + (static_cast<int64_t>(p.idx[j + s]) - c0) * MT;
          for (int v = 0; v < NV; ++v) acc[s][v] = vfma(w, vload(row + v * VL), acc[s][v]);
        }
      }
      for (; j < j1; ++j) {
        const Vec w = vbroadcast(vals + j);
        const float* row = at + (static_cast<int64_t>(p.idx[j]) - c0) * MT;
        for (int v = 0; v < NV; ++v) acc[0][v] = vfma(w, vload(row + v * VL), acc[0][v]);
      }
      for (int s = 1; s < S; ++s)
        for (int v = 0; v < NV; ++v) acc[0][v] = vadd(acc[0][v], acc[s][v]);
      float* keep = last ? buf + i * MT : yt + n * MT;
      for (int v = 0; v < NV; ++v) vstore(keep + v * VL, acc[0][v]);
    }
    if (!last) continue;
    float* y = p.y + m0 * p.ldy + n0;
    if (outs == VL && rows == MT) {
      for (int v = 0; v < NV; ++v) transpose_tile(buf + v * VL, MT, y + v * VL * p.ldy, p.ldy);
    } else {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < outs; ++i) y[r * p.ldy + i] = buf[i * MT + r];
    }
  }
}

template <int NV>
struct DenseSparseTask {
  const ElementDenseSparse* p;
  const ElementPlan* plan;
  const float* vals;
  const float* at;
  float* yt;
  int64_t m0, rows, q;
};

template <int NV>
void outputs_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const DenseSparseTask<NV>*>(ctx);
  tile_chunk<NV>(*c.p, *c.plan, c.vals, c.at, c.yt, c.m0, c.rows, c.q, begin, end);
}

// Private mode: worker w takes tiles w, w + workers, ... with scratch of its own, so the whole
// product is one parallel region (no barrier per tile and chunk).
template <int NV>
void workers_task(void* ctx, int64_t begin, int64_t end) {
  constexpr int64_t MT = NV * VL;
  const auto& c = *static_cast<const DenseSparseTask<NV>*>(ctx);
  const ElementDenseSparse& p = *c.p;
  const ElementPlan& plan = *c.plan;
  const int64_t tiles = (p.m + MT - 1) / MT;
  for (int64_t w = begin; w < end; ++w) {
    float* at = plan.scratch + w * (plan.chunk + p.w.rows) * MT;
    float* yt = at + plan.chunk * MT;
    for (int64_t t = w; t < tiles; t += plan.workers) {
      const int64_t m0 = t * MT, rows = lesser(MT, p.m - m0);
      for (int64_t q = 0; q < plan.chunks; ++q) {
        const int64_t c0 = q * plan.chunk;
        load_tile(p, m0, rows, c0, lesser(plan.chunk, p.w.cols - c0), at, MT);
        tile_chunk<NV>(p, plan, c.vals, at, yt, m0, rows, q, 0, p.w.rows);
      }
    }
  }
}

template <int NV>
void dense_sparse_tiles(const ElementDenseSparse& p, ParallelFor parallel_for, const ElementPlan& plan,
                        const float* vals) {
  constexpr int64_t MT = NV * VL;
  if (plan.workers > 0) {
    DenseSparseTask<NV> task{&p, &plan, vals, nullptr, nullptr, 0, 0, 0};
    parallel_for(plan.workers, workers_task<NV>, &task);
    return;
  }
  // Shared mode (few tiles of M): each tile and chunk transposed once, by all threads, then
  // the outputs split among them.
  float* at = plan.scratch;
  float* yt = at + plan.chunk * MT;
  for (int64_t m0 = 0; m0 < p.m; m0 += MT) {
    const int64_t rows = lesser(MT, p.m - m0);
    for (int64_t q = 0; q < plan.chunks; ++q) {
      const int64_t c0 = q * plan.chunk;
      TileTask load{&p, m0, rows, c0, MT, at};
      parallel_for(lesser(plan.chunk, p.w.cols - c0), tile_task, &load);
      DenseSparseTask<NV> task{&p, &plan, vals, at, yt, m0, rows, q};
      parallel_for(p.w.rows, outputs_task<NV>, &task);
    }
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
    int64_t j = p.ptr[n];
    for (; j + VL <= p.ptr[n + 1]; j += VL) {  // VL nonzeros at a time: one reduction for all
      Vec s[VL];
      for (int u = 0; u < VL; ++u) {
        const float* row = c.xt + static_cast<int64_t>(p.idx[j + u]) * MT;
        s[u] = vzero();
        for (int v = 0; v < NV; ++v) s[u] = vfma(d[v], vload(row + v * VL), s[u]);
      }
      vstore(c.sums + j, vadd(vload(c.sums + j), vsums(s)));
    }
    for (; j < p.ptr[n + 1]; ++j) {
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
    transpose_tile_of(p.x + m0 * p.ldx, p.ldx, rows, 0, p.k, xt, MT, parallel_for);
    SampledTask<NV> task{&p, xt, dyt, sums, m0, rows};
    parallel_for(p.n, sampled_task<NV>, &task);
  }
  ScatterTask scatter{&p, sums};
  parallel_for(p.n, scatter_task, &scatter);
}

}  // namespace

void element_plan(int64_t width, int64_t tile_bytes, int min_nv, int max_nv, int64_t* mt, int64_t* chunk) {
  const int nv = tile_vectors(width, tile_bytes, min_nv, max_nv);
  const int64_t fits = tile_bytes / (nv * VL * static_cast<int64_t>(sizeof(float))) / VL * VL;
  *mt = static_cast<int64_t>(nv) * VL;
  *chunk = fits >= width ? (width > 0 ? width : 1) : (fits > VL ? fits : VL);  // one chunk even of nothing
}

void element_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for, const ElementPlan& plan,
                          const float* vals) {
  switch (plan.mt / VL) {
    case 8: dense_sparse_tiles<8>(p, parallel_for, plan, vals); break;
    case 4: dense_sparse_tiles<4>(p, parallel_for, plan, vals); break;
    case 2: dense_sparse_tiles<2>(p, parallel_for, plan, vals); break;
    default: dense_sparse_tiles<1>(p, parallel_for, plan, vals); break;
  }
}

void element_sampled(const ElementSampled& p, ParallelFor parallel_for, int64_t mt, float* xt, float* dyt,
                     float* sums) {
  switch (mt / VL) {
    case 8: sampled_tiles<8>(p, parallel_for, xt, dyt, sums); break;
    case 4: sampled_tiles<4>(p, parallel_for, xt, dyt, sums); break;
    case 2: sampled_tiles<2>(p, parallel_for, xt, dyt, sums); break;
    default: sampled_tiles<1>(p, parallel_for, xt, dyt, sums); break;
  }
}

}  // namespace SK_KERNELS_NS
}  // namespace cpu
}  // namespace sparsekern

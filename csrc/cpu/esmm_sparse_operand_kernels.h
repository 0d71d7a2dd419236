// The kernel of the products with a sparse operand (esmm_sparse_operand.h: the dense weight gradient,
// and the dense format's forward pass and input gradient), written once and
// compiled once per instruction set (esmm_sparse_operand_portable.cpp, _avx2.cpp, _avx512.cpp; the
// rules of such a unit are in bsmm_kernels.h).
//
// out(s, d) = sum_r S[r, s] D[r, d], S listed by chunk of rows (SparseOperandListing). The dense
// side D is read in panels of one chunk of rows by PANEL_COLS columns, copied so that they sit in
// L1; for each column s of S, its nonzeros in the chunk each cost PANEL_COLS / VL vector FMAs
// against one panel row, into running sums kept for a block of columns s (in L2) across chunks.
// A panel row is read from L1 once per FMA: the loads and the FMAs of a core then run at about
// the same rate, where the kernel of the forward pass (its rows from L2) waited on L2.
#include <stdint.h>

#include "esmm_sparse_operand.h"
#include "simd.h"

namespace sparsekern {
namespace cpu {
namespace SK_KERNELS_NS {

void sparse_operand_product(const SparseOperandProduct& p, ParallelFor parallel_for);

namespace {

constexpr int64_t kPanelVectors = SPARSE_OPERAND_PANEL_COLS / VL;
static_assert(kPanelVectors * VL == SPARSE_OPERAND_PANEL_COLS, "the panel is whole vectors wide");

inline int64_t lesser(int64_t a, int64_t b) { return a < b ? a : b; }

// Rows [r0, r0 + rows) and columns [d0, d0 + cols) of D into panel[rows][PANEL_COLS], zeros past cols.
inline void copy_panel(const SparseOperandProduct& p, int64_t r0, int64_t rows, int64_t d0, int64_t cols,
                       float* panel) {
  constexpr int64_t W = SPARSE_OPERAND_PANEL_COLS;
  if (p.dense_transposed) {  // D[r, d] = dense[d, r]: VL x VL register transposes where whole
    const float* src = p.dense + d0 * p.ld_dense + r0;
    int64_t r = 0;
    if (cols == W)
      for (; r + VL <= rows; r += VL)
        for (int64_t v = 0; v < kPanelVectors; ++v)
          transpose_tile(src + v * VL * p.ld_dense + r, p.ld_dense, panel + r * W + v * VL, W);
    for (; r < rows; ++r) {
      float* dst = panel + r * W;
      for (int64_t c = 0; c < cols; ++c) dst[c] = src[c * p.ld_dense + r];
      for (int64_t c = cols; c < W; ++c) dst[c] = 0.f;
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = p.dense + (r0 + r) * p.ld_dense + d0;
    float* dst = panel + r * W;
    if (cols == W) {
      for (int64_t v = 0; v < kPanelVectors; ++v) vstore(dst + v * VL, vload(src + v * VL));
    } else {
      for (int64_t c = 0; c < cols; ++c) dst[c] = src[c];
      for (int64_t c = cols; c < W; ++c) dst[c] = 0.f;
    }
  }
}

// Whether the panel's rows [0, rows) are all finite (x * 0 is 0 for finite x, NaN for Inf and
// NaN; the padding columns are zeros). A pass over a panel in L1.
inline bool panel_finite(const float* panel, int64_t rows) {
  Vec check = vzero();
  const Vec zero = vzero();
  for (int64_t i = 0; i < rows * kPanelVectors; ++i) check = vfma(vload(panel + i * VL), zero, check);
  return vsum(check) == 0.f;
}

// sums[W] += the column's nonzeros [j, j1) of one chunk times their panel rows. S sets of
// accumulators take turns by nonzero so that at least 8 FMA chains are in flight (an FMA's
// latency times the FMAs a core starts per cycle).
inline void accumulate(const SparseOperandEntry* e, int64_t j, int64_t j1, const float* panel, float* sums) {
  constexpr int64_t NV = kPanelVectors, W = SPARSE_OPERAND_PANEL_COLS;
  constexpr int S = NV >= 8 ? 1 : static_cast<int>(8 / NV);
  Vec acc[S][NV];
  for (int64_t v = 0; v < NV; ++v) acc[0][v] = vload(sums + v * VL);
  for (int s = 1; s < S; ++s)
    for (int64_t v = 0; v < NV; ++v) acc[s][v] = vzero();
  for (; j + S <= j1; j += S) {
    for (int s = 0; s < S; ++s) {
      const Vec w = vbroadcast(&e[j + s].value);
      const float* row = panel + static_cast<int64_t>(e[j + s].row) * W;
      for (int64_t v = 0; v < NV; ++v) acc[s][v] = vfma(w, vload(row + v * VL), acc[s][v]);
    }
  }
  for (; j < j1; ++j) {
    const Vec w = vbroadcast(&e[j].value);
    const float* row = panel + static_cast<int64_t>(e[j].row) * W;
    for (int64_t v = 0; v < NV; ++v) acc[0][v] = vfma(w, vload(row + v * VL), acc[0][v]);
  }
  for (int s = 1; s < S; ++s)
    for (int64_t v = 0; v < NV; ++v) acc[0][v] = vadd(acc[0][v], acc[s][v]);
  for (int64_t v = 0; v < NV; ++v) vstore(sums + v * VL, acc[0][v]);
}

// The sums of columns [s0, s1) of S by the panel columns [d0, d0 + cols) into out.
inline void write_out(const SparseOperandProduct& p, const float* sums, int64_t s0, int64_t s1, int64_t d0,
                      int64_t cols) {
  constexpr int64_t W = SPARSE_OPERAND_PANEL_COLS;
  if (!p.out_transposed) {
    for (int64_t s = s0; s < s1; ++s) {
      const float* from = sums + (s - s0) * W;
      float* to = p.out + s * p.ld_out + d0;
      for (int64_t c = 0; c < cols; ++c) to[c] = from[c];
    }
    return;
  }
  // out[d, s]: VL x VL blocks through a register transpose where whole, else one by one.
  int64_t s = s0;
  if (cols == W)
    for (; s + VL <= s1; s += VL)
      for (int64_t v = 0; v < kPanelVectors; ++v)
        transpose_tile(sums + (s - s0) * W + v * VL, W, p.out + (d0 + v * VL) * p.ld_out + s, p.ld_out);
  for (; s < s1; ++s)
    for (int64_t c = 0; c < cols; ++c) p.out[(d0 + c) * p.ld_out + s] = sums[(s - s0) * W + c];
}

// One item: panel column tile t of D, block b of S's columns, over every chunk of rows.
void product_item(const SparseOperandProduct& p, int64_t t, int64_t b, float* panel, float* sums) {
  constexpr int64_t W = SPARSE_OPERAND_PANEL_COLS;
  const SparseOperandListing& l = p.listing;
  const int64_t d0 = t * W, cols = lesser(W, p.d_cols - d0);
  const int64_t s0 = b * p.s_block, s1 = lesser(s0 + p.s_block, l.cols);
  for (int64_t i = 0; i < (s1 - s0) * W; ++i) sums[i] = 0.f;
  // Block 0 of a tile goes through every chunk, so its checks cover the tile's part of D once.
  const bool check = p.dense_not_finite != nullptr && b == 0;
  for (int64_t q = 0; q < l.chunks; ++q) {
    const int64_t r0 = q * l.chunk_rows, rows = lesser(l.chunk_rows, l.rows - r0);
    const int64_t* ptr = l.ptr + q * l.cols;
    const bool empty = ptr[s0] == ptr[s1];  // no nonzero of these columns in this chunk
    if (empty && !check) continue;
    copy_panel(p, r0, rows, d0, cols, panel);
    if (check && !panel_finite(panel, rows)) {
      p.dense_not_finite->store(true, std::memory_order_relaxed);
      return;  // the caller runs the dense product: out need not be written
    }
    if (empty) continue;
    for (int64_t s = s0; s < s1; ++s)
      if (ptr[s] < ptr[s + 1]) accumulate(l.entries, ptr[s], ptr[s + 1], panel, sums + (s - s0) * W);
  }
  write_out(p, sums, s0, s1, d0, cols);
}

struct ProductTask {
  const SparseOperandProduct* p;
  int64_t tiles, blocks;
};

// Worker w takes items w, w + workers, ... (tile-major), with scratch of its own.
void workers_task(void* ctx, int64_t begin, int64_t end) {
  constexpr int64_t W = SPARSE_OPERAND_PANEL_COLS;
  const auto& c = *static_cast<const ProductTask*>(ctx);
  const SparseOperandProduct& p = *c.p;
  for (int64_t w = begin; w < end; ++w) {
    float* panel = p.scratch + w * sparse_operand_scratch_per_worker(p.listing.chunk_rows, p.s_block);
    float* sums = panel + p.listing.chunk_rows * W;
    for (int64_t item = w; item < c.tiles * c.blocks; item += p.workers) {
      if (p.dense_not_finite != nullptr && p.dense_not_finite->load(std::memory_order_relaxed)) return;
      product_item(p, item / c.blocks, item % c.blocks, panel, sums);
    }
  }
}

}  // namespace

void sparse_operand_product(const SparseOperandProduct& p, ParallelFor parallel_for) {
  constexpr int64_t W = SPARSE_OPERAND_PANEL_COLS;
  ProductTask task{&p, (p.d_cols + W - 1) / W, (p.listing.cols + p.s_block - 1) / p.s_block};
  parallel_for(p.workers, workers_task, &task);
}

}  // namespace SK_KERNELS_NS
}  // namespace cpu
}  // namespace sparsekern

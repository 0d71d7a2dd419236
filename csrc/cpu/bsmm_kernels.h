// The CPU kernels, written once and compiled once per instruction set: bsmm_portable.cpp,
// bsmm_avx2.cpp and bsmm_avx512.cpp each define SK_KERNELS_NS (a namespace of their own)
// and at most one of SK_KERNELS_AVX2 / SK_KERNELS_AVX512, then include this file.
//
// Everything here has internal linkage except the two entry points, and no C++ standard
// library header is included: an inline function compiled for AVX-512 in one unit could
// otherwise be merged by the linker into the portable unit and fault on an older CPU.
#include <stdint.h>
#include <stdlib.h>

#include "../common/block_index.h"
#include "bsmm_cpu.h"
#include "simd.h"

namespace sparsekern {
namespace cpu {
namespace SK_KERNELS_NS {

// Both return false when scratch memory could not be allocated.
// dense_sparse computes the block rows [br0, br1) of y; panel_offset[j] locates block j's panel
// in `panels`, for the blocks of those rows.
bool dense_sparse(const DenseSparseProblem& p, ParallelFor parallel_for, const int32_t* outer,
                  const int64_t* panel_offset, float* panels, int64_t br0, int64_t br1);
// sampled works through M in chunks of chunk_rows rows (one chunk unless dw is fp32, which
// later chunks add to): it packs the chunk of dy and x into dy_panels [n_block_rows][rows]
// [block_out] and x_panels [n_block_cols][rows][block_in] (scratch from the caller), then
// computes every block over it.
bool sampled(const SampledProblem& p, ParallelFor parallel_for, float* dy_panels, float* x_panels,
             int64_t chunk_rows);

namespace {

using index::block_extent;

// ------------------------------------------------------------------ tuning
// VL lanes (simd.h). Forward microtile: NV <= FWD_MAX_NV vectors wide (a wider panel of a 64-wide
// block row no longer fits L1), FWD_ACC accumulators (FWD_MR1 rows when one vector wide).
// Weight-gradient microtile: NV <= MAX_NV vectors, GW_ACC accumulators (GW_ACC / NV rows of dy;
// where that does not divide the block side, the block's last rows take a smaller tile). Tuned
// on a Sapphire Rapids core for AVX-512; AVX2 has 16 registers, hence the smaller tiles, measured
// on an AMD EPYC (Zen 3): 6 x 16 forward, 3 x 32 weight gradient (with 4 x 16 the backward at
// block 32 took 1.2-1.4x as long).
#if defined(SK_KERNELS_AVX512)
constexpr int MAX_NV = 4, FWD_MAX_NV = 2, FWD_ACC = 28, FWD_MR1 = 16, GW_ACC = 16;
#else
constexpr int MAX_NV = 4, FWD_MAX_NV = 2, FWD_ACC = 12, FWD_MR1 = 12, GW_ACC = 12;
#endif

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Panel width for a block side: NV vectors, at most max_nv, dividing the side.
inline int vectors_for(int64_t side, int max_nv = MAX_NV) { return static_cast<int>(min64(side / VL, max_nv)); }

// Rows of a forward microtile for NV vectors: FWD_ACC accumulators, fewer for one vector
// (a broadcast per accumulator there, and the loads, not the FMAs, would bound it).
constexpr int fwd_rows(int nv) { return nv == 1 ? FWD_MR1 : FWD_ACC / nv; }


inline float load_element(const StridedMatrix& w, int64_t offset) {
  if (w.dtype == DType::kFloat32) return static_cast<const float*>(w.data)[offset];
  return bf16_to_float(static_cast<const uint16_t*>(w.data)[offset]);
}

float* alloc_floats(int64_t n) {
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
  return static_cast<float*>(aligned_alloc(64, bytes > 0 ? bytes : 64));
}

// ============================================================ dense x sparse^T
// y[m, n_out] = a[m, n_in] @ w.T over active blocks (forward, and input gradient on W.T).
//
// Each active block of w is packed once per call, transposed, into panels of NC = NV * VL
// output columns: panel[chunk][k][NC], k over the block's columns inside w (edge columns are
// not stored; edge rows are zero-padded), so the microkernel streams it with vector loads.
// Rows of a are packed per tile of TILE_M rows into MR-row slivers (the tile stays in L2
// across all block rows), from which the microkernel broadcasts. A sliver is cut into groups
// of KG columns, each stored [MR][KG]: packing is then plain row copies (no transpose), a
// block's segment of the sliver is contiguous (block sides are multiples of KG), and one
// pointer, moving a float per column, addresses all MR rows by constant offsets.

struct DenseSparseContext {
  const DenseSparseProblem* p;
  const int32_t* outer;
  const int64_t* offset;
  float* panels;
  int nv;
  int64_t br0, n_rows, tile_m;  // block rows [br0, br0 + n_rows), rows of a per tile
  int64_t j0;                              // first block of those rows
  int failed;  // set when a thread could not allocate its scratch
  bool stream;  // store y past the caches (see dense_sparse)
};

void pack_weight_blocks(void* raw, int64_t j0, int64_t j1) {
  const auto& c = *static_cast<const DenseSparseContext*>(raw);
  const auto& p = *c.p;
  const StridedMatrix& w = p.w;
  const int64_t bo = p.block_out, bi = p.block_in, nc = static_cast<int64_t>(c.nv) * VL;
  const int64_t elem = w.dtype == DType::kFloat32 ? 4 : 2;
  for (int64_t j = c.j0 + j0; j < c.j0 + j1; ++j) {
    const int64_t o = c.outer[j], col = p.idx[j];
    const int64_t ne = block_extent(o, bo, w.rows), ke = block_extent(col, bi, w.cols);
    const int64_t base = o * bo * w.stride_row + col * bi * w.stride_col;
    float* dst = c.panels + c.offset[j];
    if (j + 1 < c.j0 + j1 && (w.stride_col == 1 || w.stride_row == 1)) {
      // The next block's memory rows lie a row stride apart: ask for them while this one is copied.
      const char* next = static_cast<const char*>(w.data) +
                         (c.outer[j + 1] * bo * w.stride_row + p.idx[j + 1] * bi * w.stride_col) * elem;
      const bool rows_are_n = w.stride_col == 1;
      const int64_t lines = rows_are_n ? bo : bi, span = (rows_are_n ? bi : bo) * elem;
      const int64_t stride = (rows_are_n ? w.stride_row : w.stride_col) * elem;
      for (int64_t n = 0; n < lines; ++n)
        for (int64_t b = 0; b < span; b += 64) __builtin_prefetch(next + n * stride + b, 0, 3);
    }
    if (w.stride_row == 1 && w.dtype == DType::kFloat32 && ne == bo && bo % nc == 0) {
      // w is a transposed view (the input gradient) whose block is whole: each column of the
      // block (a memory row) is copied, chunk by chunk, as vectors.
      const float* src = static_cast<const float*>(w.data) + base;
      for (int64_t k = 0; k < ke; ++k, src += w.stride_col)
        for (int64_t n0 = 0; n0 < bo; n0 += nc)
          for (int64_t q = 0; q < nc; q += VL) vstore(dst + ((n0 / nc) * ke + k) * nc + q, vload(src + n0 + q));
      continue;
    }
    if (w.stride_col == 1 && w.dtype == DType::kFloat32 && ne == bo && bo % nc == 0 && ke % VL == 0) {
      // The forward's whole fp32 block: transposed a VL x VL tile at a time.
      const float* src = static_cast<const float*>(w.data) + base;
      for (int64_t n0 = 0; n0 < bo; n0 += VL)
        for (int64_t k0 = 0; k0 < ke; k0 += VL)
          transpose_tile(src + n0 * w.stride_row + k0, w.stride_row, dst + ((n0 / nc) * ke + k0) * nc + n0 % nc, nc);
      continue;
    }
    if (w.stride_row <= w.stride_col) {
      // w is a transposed view: walk memory order, k outer, n inner.
      for (int64_t k = 0; k < ke; ++k) {
        const int64_t src = base + k * w.stride_col;
        for (int64_t n = 0; n < bo; ++n)
          dst[((n / nc) * ke + k) * nc + (n % nc)] = n < ne ? load_element(w, src + n * w.stride_row) : 0.f;
      }
      continue;
    }
    for (int64_t n = 0; n < bo; ++n) {
      float* d = dst + (n / nc) * ke * nc + (n % nc);
      if (n < ne) {
        const int64_t row = base + n * w.stride_row;
        for (int64_t k = 0; k < ke; ++k) d[k * nc] = load_element(w, row + k * w.stride_col);
      } else {
        for (int64_t k = 0; k < ke; ++k) d[k * nc] = 0.f;
      }
    }
  }
}

// Outputs from this size on are stored past the caches (see dense_sparse).
constexpr int64_t STREAM_MIN_BYTES = int64_t{4} << 20;

// Columns per group of a packed sliver: the smallest block side.
constexpr int64_t KG = 16;

// Floats in one packed sliver: n_in columns rounded up to whole groups, MR rows each.
template <int MR>
inline int64_t sliver_floats(int64_t n_in) { return index::ceil_div(n_in, KG) * KG * MR; }

// Rows [0, rows) of a -> slivers of MR rows, [n_in / KG][MR][KG] each; missing rows and the
// columns past n_in in the last group are zeros.
template <int MR>
void pack_rows(const float* a, int64_t lda, int64_t rows, int64_t n_in, float* dst) {
  const int64_t full = n_in / KG;
  for (int64_t r0 = 0; r0 < rows; r0 += MR, dst += sliver_floats<MR>(n_in)) {
    const int live = static_cast<int>(min64(MR, rows - r0));
    for (int r = 0; r < MR; ++r) {
      const float* src = a + (r0 + r) * lda;
      float* d = dst + r * KG;
      for (int64_t g = 0; g < full; ++g, src += KG, d += MR * KG)
        for (int64_t q = 0; q < KG; q += VL) vstore(d + q, r < live ? vload(src + q) : vzero());
      if (full * KG < n_in)
        for (int64_t q = 0; q < KG; ++q) d[q] = r < live && full * KG + q < n_in ? src[q] : 0.f;
    }
  }
}

// One step k of a microtile: acc[MR][NV] += x[r * KG] (r < MR) x w[0 : NV * VL].
template <int MR, int NV>
inline void dense_sparse_step(const float* x, const float* w, Vec (&acc)[MR][NV]) {
  Vec wv[NV];
  for (int v = 0; v < NV; ++v) wv[v] = vload(w + v * VL);
  for (int r = 0; r < MR; ++r) {
    const Vec xb = vbroadcast(x + r * KG);
    for (int v = 0; v < NV; ++v) acc[r][v] = vfma(xb, wv[v], acc[r][v]);
  }
}

// out[MR][NV * VL] = sliver[MR rows] @ panels of blocks [jb, je) (chunk `chunk` of each).
// Kept out of line, so that the registers are the loop's own (on AVX2 the 16 ymm hold 12
// accumulators, 2 panel vectors and a broadcast); a call per microtile is a few cycles in
// thousands.
template <int MR, int NV>
__attribute__((noinline)) void dense_sparse_micro(const float* sliver, const int32_t* idx, int64_t jb, int64_t je,
                                                  int64_t bi, int64_t n_in, const float* panels,
                                                  const int64_t* offset, int64_t chunk, float* out) {
  constexpr int NC = NV * VL;
  // Prefetches: one per 64-byte line (a step of the panel is NC floats; a group of the sliver
  // is MR lines, asked for over its first MR steps).
  constexpr int W_LINE = 16 / VL > 0 ? 16 / VL : 1;
  static_assert(MR <= KG, "a group's lines are prefetched one per step");
  Vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vzero();
  for (int64_t j = jb; j < je; ++j) {
    const int64_t col = idx[j];
    const int64_t ke = block_extent(col, bi, n_in);
    const float* w = panels + offset[j] + chunk * ke * NC;
    const float* x = sliver + col * bi * MR;
    // The next block's operands, a step ahead (its panel and sliver segment are elsewhere in
    // memory; the hardware prefetcher would only start on them after a few misses).
    const int64_t jn = j + 1 < je ? j + 1 : j;
    const float* w_next = panels + offset[jn] + chunk * block_extent(idx[jn], bi, n_in) * NC;
    const float* x_next = sliver + idx[jn] * bi * MR;
    for (int64_t k0 = 0; k0 < ke; k0 += KG, x += MR * KG, x_next += MR * KG) {
      const int64_t kn = min64(KG, ke - k0);
      for (int64_t k = 0; k < kn; ++k, w += NC, w_next += NC) {
        for (int v = 0; v < NV; v += W_LINE) __builtin_prefetch(w_next + v * VL, 0, 3);
        if (k < MR) __builtin_prefetch(x_next + k * 16, 0, 3);
        dense_sparse_step<MR, NV>(x + k, w, acc);
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstore(out + r * NC + v * VL, acc[r][v]);
}

// y[rows][cols] (leading dimension ldy) = res[rows][NC] + bias (or none). `cols` < NC only at
// a partial edge block; fp32 rows of whole vectors are stored past the caches where `stream`.
template <int NC>
inline void store_microtile(float* res, int64_t rows, int64_t cols, const float* bias, void* y_base, DType y_dtype,
                            int64_t y0, int64_t ldy, bool stream) {
  if (cols == NC && y_dtype == DType::kFloat32) {
    float* y = static_cast<float*>(y_base) + y0;
    Vec b[NC / VL];
    for (int v = 0; v < NC / VL; ++v) b[v] = bias ? vload(bias + v * VL) : vzero();
    for (int64_t r = 0; r < rows; ++r) {
      for (int v = 0; v < NC / VL; ++v) {
        Vec a = vload(res + r * NC + v * VL);
        if (bias) a = vadd(a, b[v]);
        if (stream)
          vstream(y + r * ldy + v * VL, a);
        else
          vstore(y + r * ldy + v * VL, a);
      }
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {  // a partial edge block (only `cols` columns exist), or bf16 output
    float* tmp = res + r * NC;
    if (bias)
      for (int64_t q = 0; q < cols; ++q) tmp[q] += bias[q];
    if (y_dtype == DType::kFloat32) {
      float* y = static_cast<float*>(y_base) + y0 + r * ldy;
      for (int64_t q = 0; q < cols; ++q) y[q] = tmp[q];
    } else {
      uint16_t* y = static_cast<uint16_t*>(y_base) + y0 + r * ldy;
      for (int64_t q = 0; q < cols; ++q) y[q] = float_to_bf16(tmp[q]);
    }
  }
}

template <int NV>
void dense_sparse_tiles(void* raw, int64_t t0, int64_t t1) {
  constexpr int NC = NV * VL, MR = fwd_rows(NV);
  const auto& c = *static_cast<const DenseSparseContext*>(raw);
  const auto& p = *c.p;
  const int64_t n_in = p.w.cols, n_out = p.w.rows, bo = p.block_out, bi = p.block_in;
  const int64_t sliver = sliver_floats<MR>(n_in);
  float* tile = alloc_floats(c.tile_m / MR * sliver);
  if (tile == nullptr) {
    __atomic_store_n(&const_cast<DenseSparseContext&>(c).failed, 1, __ATOMIC_RELAXED);
    return;
  }
  int64_t packed = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t mt = t / c.n_rows, br = c.br0 + t % c.n_rows;
    const int64_t m0 = mt * c.tile_m, rows_tile = min64(c.tile_m, p.m - m0);
    if (mt != packed) {
      pack_rows<MR>(p.a + m0 * p.lda, p.lda, rows_tile, n_in, tile);
      packed = mt;
    }
    const int64_t jb = p.ptr[br], je = p.ptr[br + 1];
    const int64_t ne = block_extent(br, bo, n_out);
    for (int64_t chunk = 0; chunk * NC < ne; ++chunk) {
      const int64_t cols = min64(NC, ne - chunk * NC);
      const float* bias = p.bias ? p.bias + br * bo + chunk * NC : nullptr;
      for (int64_t r0 = 0; r0 < rows_tile; r0 += MR) {
        alignas(64) float res[MR * NC];
        dense_sparse_micro<MR, NV>(tile + r0 / MR * sliver, p.idx, jb, je, bi, n_in, c.panels, c.offset, chunk, res);
        store_microtile<NC>(res, min64(MR, rows_tile - r0), cols, bias, p.y, p.y_dtype,
                            (m0 + r0) * p.ldy + br * bo + chunk * NC, p.ldy, c.stream);
      }
    }
  }
  if (c.stream) stream_fence();  // the streamed stores reach memory before the caller reads y
  free(tile);
}

// ================================================================ sampled dy^T x
// dw[block] = dy[:, block rows].T @ x[:, block cols] for each active block, a chunk of M at
// a time (the chunk's panels stay in the last-level cache). dy and x are packed into column panels, dy_panels[r][m][bo] and
// x_panels[c][m][bi] (zero-padded at the edges): a block's operands are then two contiguous
// streams over M, where in place their rows lie a whole row stride apart (a TLB miss per row,
// and no hardware prefetch). Then each block, over chunks of M_CHUNK rows (L1-resident),
// accumulates its microtiles in registers, and across chunks in dw itself (a whole fp32
// block) or in a per-thread fp32 buffer stored once at the end, converted to dw's dtype (an
// edge block, or bf16). Runs of blocks of one block row go together so that the dy panel is
// read from L2.

constexpr int64_t M_CHUNK = 128;
constexpr int64_t RUN = 8;  // blocks of one block row computed together

struct SampledContext {
  const SampledProblem* p;
  float* dy_panels;
  float* x_panels;
  int nv;
  int failed;
  int64_t row0, rows;  // the chunk of M packed now
  bool accumulate;     // add to dw (a later chunk) instead of storing
};

// Rows [m0, m1) of src (extent columns, leading dimension ld) -> panels[b][m][width] for every
// block b. A few rows at a time (PACK_ROWS), panel by panel: each panel then takes a run of
// rows contiguous in it, from a few read streams, where a row at a time would write to every
// panel at once.
constexpr int64_t PACK_ROWS = 8;

inline void pack_rows_into_panels(const float* src, int64_t ld, int64_t extent, int64_t width, int64_t m0,
                                  int64_t m1, int64_t m_total, float* panels) {
  const int64_t full = extent / width;
  for (int64_t b = 0; b < full; ++b) {
    const float* s = src + m0 * ld + b * width;
    float* d = panels + (b * m_total + m0) * width;
    for (int64_t m = m0; m < m1; ++m, s += ld, d += width)
      for (int64_t q = 0; q < width; q += VL) vstore(d + q, vload(s + q));
  }
  if (full * width < extent) {  // the partial edge block
    const int64_t rest = extent - full * width;
    for (int64_t m = m0; m < m1; ++m) {
      const float* s = src + m * ld + full * width;
      float* d = panels + (full * m_total + m) * width;
      for (int64_t q = 0; q < width; ++q) d[q] = q < rest ? s[q] : 0.f;
    }
  }
}

void pack_panels(void* raw, int64_t m0, int64_t m1) {
  const auto& c = *static_cast<const SampledContext*>(raw);
  const auto& p = *c.p;
  for (int64_t g = m0; g < m1; g += PACK_ROWS) {
    const int64_t ge = min64(g + PACK_ROWS, m1);
    pack_rows_into_panels(p.dy + c.row0 * p.ldd, p.ldd, p.n, p.block_out, g, ge, c.rows, c.dy_panels);
    pack_rows_into_panels(p.x + c.row0 * p.ldx, p.ldx, p.k, p.block_in, g, ge, c.rows, c.x_panels);
  }
}

// acc (+)= dy[0:mc, 0:MR].T @ x[0:mc, 0:NC] from packed rows, kept in buf (leading dim ldb).
// [ahead, ahead + 16 * ahead_lines) is part of what streams next: asked for evenly over the
// iterations (the hardware prefetcher stops at every page of a new panel, and a burst of
// requests would stall the loop once the core's few outstanding misses are taken).
template <int MR, int NV>
inline void sampled_micro(const float* dy, int64_t ldd, const float* x, int64_t ldx, int64_t mc, float* buf,
                          int64_t ldb, bool first, const float* ahead, int64_t ahead_lines) {
  Vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = first ? vzero() : vload(buf + r * ldb + v * VL);
  const int64_t per_row = ahead_lines > 0 ? index::ceil_div(ahead_lines, mc) : 0;
  const float* const ahead_end = ahead + 16 * ahead_lines;
  for (int64_t m = 0; m < mc; ++m) {
    if (per_row > 0 && ahead < ahead_end) {
      for (int64_t l = 0; l < per_row; ++l) __builtin_prefetch(ahead + 16 * l, 0, 3);
      ahead += 16 * per_row;
    }
    Vec xv[NV];
    for (int v = 0; v < NV; ++v) xv[v] = vload(x + v * VL);
    for (int r = 0; r < MR; ++r) {
      const Vec d = vbroadcast(dy + r);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfma(d, xv[v], acc[r][v]);
    }
    dy += ldd;
    x += ldx;
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) vstore(buf + r * ldb + v * VL, acc[r][v]);
}

// sampled_micro for rows < MR rows of dy (the last rows of a block whose side MR does not
// divide): the tile of that many rows.
template <int MR, int NV>
inline void sampled_micro_rows(int64_t rows, const float* dy, int64_t ldd, const float* x, int64_t ldx, int64_t mc,
                               float* buf, int64_t ldb, bool first, const float* ahead, int64_t ahead_lines) {
  if (rows >= MR) return sampled_micro<MR, NV>(dy, ldd, x, ldx, mc, buf, ldb, first, ahead, ahead_lines);
  if constexpr (MR > 1) sampled_micro_rows<MR - 1, NV>(rows, dy, ldd, x, ldx, mc, buf, ldb, first, ahead, ahead_lines);
}

template <int NV>
void sampled_blocks(void* raw, int64_t j0, int64_t j1) {
  constexpr int NC = NV * VL, MR = GW_ACC / NV;
  const auto& c = *static_cast<const SampledContext*>(raw);
  const auto& p = *c.p;
  const int64_t bo = p.block_out, bi = p.block_in;
  float* acc = alloc_floats(RUN * bo * bi);
  if (acc == nullptr) {
    __atomic_store_n(&const_cast<SampledContext&>(c).failed, 1, __ATOMIC_RELAXED);
    return;
  }
  for (int64_t ja = j0; ja < j1;) {
    const int64_t br = p.block_row[ja];
    int64_t jb = ja + 1;
    while (jb < j1 && jb - ja < RUN && p.block_row[jb] == br) ++jb;
    const int64_t ie = block_extent(br, bo, p.n);
    // fp32 blocks wholly inside dw accumulate in place, not in `acc`: no copy into dw (and
    // re-read of it) per chunk of M.
    auto in_place = [&](int64_t j) {
      return p.dw_dtype == DType::kFloat32 && c.rows > 0 && ie == bo && block_extent(p.col_idx[j], bi, p.k) == bi;
    };
    const float* dy_panel = c.dy_panels + br * c.rows * bo;
    if (c.rows == 0)
      for (int64_t e = 0; e < (jb - ja) * bo * bi; ++e) acc[e] = 0.f;
    for (int64_t m0 = 0; m0 < c.rows; m0 += M_CHUNK) {
      const int64_t mc = min64(M_CHUNK, c.rows - m0);
      for (int64_t j = ja; j < jb; ++j) {
        const float* x_panel = c.x_panels + (p.col_idx[j] * c.rows + m0) * bi;
        const bool direct = in_place(j);
        float* a = direct ? static_cast<float*>(p.dw) + br * bo * p.ldw + p.col_idx[j] * bi : acc + (j - ja) * bo * bi;
        const int64_t ld_a = direct ? p.ldw : bi;
        const bool first = m0 == 0 && !(direct && c.accumulate);  // start from zero, not from a
        // What streams next: the next block's x chunk, or the next chunk of this row's dy
        // and of the run's first block (mc rows of the next chunk are at most mc rows).
        const float* x_ahead = j + 1 < jb ? c.x_panels + (p.col_idx[j + 1] * c.rows + m0) * bi
                               : m0 + M_CHUNK < c.rows ? c.x_panels + (p.col_idx[ja] * c.rows + m0 + M_CHUNK) * bi
                                                    : nullptr;
        const float* dy_ahead = j + 1 == jb && m0 + M_CHUNK < c.rows ? dy_panel + (m0 + M_CHUNK) * bo : nullptr;
        // Their lines are spread over the block's microtiles: the next x chunk over all of
        // them, or over the first half and the next dy chunk over the second.
        const int64_t tiles = index::ceil_div(bo, MR) * index::ceil_div(bi, NC);
        const int64_t x_tiles = dy_ahead && tiles > 1 ? tiles / 2 : tiles;
        const int64_t x_lines = x_ahead ? mc * bi / 16 : 0, dy_lines = dy_ahead && tiles > 1 ? mc * bo / 16 : 0;
        int64_t u = 0;
        for (int64_t i0 = 0; i0 < bo; i0 += MR) {
          for (int64_t q0 = 0; q0 < bi; q0 += NC, ++u) {
            const bool on_x = u < x_tiles;
            const int64_t lines = on_x ? x_lines : dy_lines;
            const int64_t n = on_x ? x_tiles : tiles - x_tiles, v = on_x ? u : u - x_tiles;
            const int64_t l0 = lines * v / n, l1 = lines * (v + 1) / n;
            const float* ahead = (on_x ? x_ahead : dy_ahead);
            const float* dy_tile = dy_panel + m0 * bo + i0;
            const float* x_tile = x_panel + q0;
            float* a_tile = a + i0 * ld_a + q0;
            if (i0 + MR <= bo) {
              sampled_micro<MR, NV>(dy_tile, bo, x_tile, bi, mc, a_tile, ld_a, first, ahead ? ahead + 16 * l0 : nullptr,
                                    l1 - l0);
            } else if constexpr (16 % MR != 0) {  // never taken where MR divides every block side
              sampled_micro_rows<MR - 1, NV>(bo - i0, dy_tile, bo, x_tile, bi, mc, a_tile, ld_a, first,
                                             ahead ? ahead + 16 * l0 : nullptr, l1 - l0);
            }
          }
        }
      }
    }
    for (int64_t j = ja; j < jb; ++j) {
      if (in_place(j)) continue;  // already in dw
      const int64_t bc = p.col_idx[j], ke = block_extent(bc, bi, p.k);
      const float* a = acc + (j - ja) * bo * bi;
      const int64_t out0 = br * bo * p.ldw + bc * bi;
      if (p.dw_dtype == DType::kFloat32) {
        float* dw = static_cast<float*>(p.dw) + out0;
        if (c.accumulate) {
          for (int64_t i = 0; i < ie; ++i)
            for (int64_t q = 0; q < ke; ++q) dw[i * p.ldw + q] += a[i * bi + q];
        } else {
          for (int64_t i = 0; i < ie; ++i)
            for (int64_t q = 0; q < ke; ++q) dw[i * p.ldw + q] = a[i * bi + q];
        }
      } else {  // bf16: always a single chunk (see the driver), so never accumulated
        uint16_t* dw = static_cast<uint16_t*>(p.dw) + out0;
        for (int64_t i = 0; i < ie; ++i)
          for (int64_t q = 0; q < ke; ++q) dw[i * p.ldw + q] = float_to_bf16(a[i * bi + q]);
      }
    }
    ja = jb;
  }
  free(acc);
}

}  // namespace

// --------------------------------------------------------------- entry points
bool dense_sparse(const DenseSparseProblem& p, ParallelFor parallel_for, const int32_t* outer,
                  const int64_t* panel_offset, float* panels, int64_t br0, int64_t br1) {
  DenseSparseContext c{&p, outer, panel_offset, panels, vectors_for(p.block_out, FWD_MAX_NV), br0, br1 - br0,
                       0,  0,     0,            false};
  // A large fp32 y is written with streaming stores: a y that cannot stay in cache would
  // otherwise be read from memory (to own each line) before being overwritten, doubling its
  // traffic. Only where every vector store covers whole aligned vectors.
  c.stream = p.y_dtype == DType::kFloat32 && p.m * p.ldy * 4 >= STREAM_MIN_BYTES &&
             reinterpret_cast<uintptr_t>(p.y) % (VL * 4) == 0 && p.ldy % VL == 0 && p.block_out % VL == 0;
  c.j0 = p.ptr[br0];
  const int64_t n_blocks = p.ptr[br1] - c.j0;
  if (n_blocks > 0) parallel_for(n_blocks, pack_weight_blocks, &c);
  if (p.m == 0 || c.n_rows == 0) return true;
  // A tile of rows of a fills about 1 MiB (L2-resident), in whole MR-row slivers.
  const int mr = fwd_rows(c.nv);
  const int64_t n_in = p.w.cols > 0 ? p.w.cols : 1;
  int64_t slivers = (int64_t{1} << 20) / (n_in * 4 * mr);
  slivers = slivers < 1 ? 1 : slivers;
  const int64_t needed = index::ceil_div(p.m, mr);
  c.tile_m = min64(slivers, needed) * mr;
  const int64_t tasks = index::ceil_div(p.m, c.tile_m) * c.n_rows;
  switch (c.nv) {
    case 1: parallel_for(tasks, dense_sparse_tiles<1>, &c); break;
    case 2: parallel_for(tasks, dense_sparse_tiles<2>, &c); break;
    default: parallel_for(tasks, dense_sparse_tiles<FWD_MAX_NV>, &c); break;
  }
  return c.failed == 0;
}

bool sampled(const SampledProblem& p, ParallelFor parallel_for, float* dy_panels, float* x_panels,
             int64_t chunk_rows) {
  if (p.nnz == 0) return true;
  SampledContext c{&p, dy_panels, x_panels, vectors_for(p.block_in), 0, 0, 0, false};
  for (int64_t row0 = 0; row0 == 0 || row0 < p.m; row0 += chunk_rows) {
    c.row0 = row0;
    c.rows = min64(chunk_rows, p.m - row0);
    c.accumulate = row0 > 0;
    if (c.rows > 0) parallel_for(c.rows, pack_panels, &c);
    switch (c.nv) {
      case 1: parallel_for(p.nnz, sampled_blocks<1>, &c); break;
      case 2: parallel_for(p.nnz, sampled_blocks<2>, &c); break;
      default: parallel_for(p.nnz, sampled_blocks<MAX_NV>, &c); break;
    }
    if (c.failed) return false;
  }
  return true;
}

}  // namespace SK_KERNELS_NS
}  // namespace cpu
}  // namespace sparsekern

// The CPU kernels for bf16 on AMX: the dense x sparse^T product (forward, and input gradient
// on W.T) and the sampled weight gradient. The tile unit multiplies 16 x 32 bf16 by 32 x 16
// bf16 into 16 x 16 fp32 in one instruction, many times the FMA units' rate; dense bf16
// F.linear (oneDNN) uses it too. Only this unit is compiled for AMX (the pragma), and the
// dispatcher calls it only where the CPU and the kernel allow AMX and, for the product, the
// problem fits the tiles (dense_sparse_takes_bf16).
//
// As in bsmm_kernels.h: no C++ standard library header, everything internal but the entry.
// Where the compiler cannot build it (no SK_AMX, see bsmm_amx.h) the entries are stubs.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bsmm_amx.h"
#ifdef SK_AMX
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")
#endif
#include <immintrin.h>

#include "transpose_avx512.h"
#endif
#include "../common/block_index.h"

namespace sparsekern {
namespace cpu {
namespace amx {

#ifdef SK_AMX
namespace {

using index::block_extent;

// Tiles: A is 16 rows x 32 bf16 of a (packed per tile of rows); B is 16 pairs of k x 16
// output columns x 2 bf16, the pair-interleaved ("VNNI") layout the instruction reads, packed
// from w; C is 16 x 16 fp32. A step computes 32 rows x 32 columns: C tiles 0-3, A tiles 4-5,
// B tiles 6-7, all eight.
constexpr int64_t TILE_ROWS = 16, TILE_K = 32, TILE_COLS = 16, TILE_ELEMS = 16 * 32;
constexpr int64_t STEP_ROWS = 2 * TILE_ROWS, STEP_COLS = 2 * TILE_COLS;

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

// Our tile configuration, loaded at the start of a task; the thread's previous one is put
// back at its end (another library's AMX code on this thread, oneDNN's, may count on the
// configuration it loaded being still in place).
struct TileScope {
  TileConfig saved;
  TileScope() {
    _tile_storeconfig(&saved);
    TileConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; ++t) {
      cfg.rows[t] = TILE_ROWS;
      cfg.bytes_per_row[t] = 64;
    }
    _tile_loadconfig(&cfg);
  }
  ~TileScope() {
    if (saved.palette != 0) _tile_loadconfig(&saved);
    else _tile_release();
  }
};

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

struct Context {
  const DenseSparseProblem* p;
  const int32_t* outer;
  const int64_t* offset;
  float* panels;  // bf16 panels here, at the same offsets as the fp32 ones (half the room)
  int64_t br0, n_rows, tile_m;
  int64_t j0;
  int failed;
};

// (GCC 12 warns inside its own intrinsics below, about the undefined vector they start from.)
#if !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// dst row c = column c of the 16 x 16 matrix of 32-bit words whose row r is at src + r * lds
// (bf16 elements apart; lds even): a pair of bf16 moves as one word.
inline void transpose_words(const uint16_t* src, int64_t lds, uint16_t* dst) {
  transpose16(reinterpret_cast<const float*>(src), lds / 2, reinterpret_cast<float*>(dst), 16);
}

// One tile row from two rows of 16 bf16 (`first`, `second`): first[0] second[0] first[1] ...
inline void interleave_rows(const uint16_t* first, const uint16_t* second, uint16_t* dst) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(first));
  const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(second));
  const __m256i a = _mm256_unpacklo_epi16(lo, hi), b = _mm256_unpackhi_epi16(lo, hi);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permute2x128_si256(a, b, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), _mm256_permute2x128_si256(a, b, 0x31));
}

// One B tile from w: tile[q][n][e] = w[n0 + n][k0 + 2q + e] (zero past row ne of the block).
void pack_tile(const StridedMatrix& w, int64_t n0, int64_t ne, int64_t k0, uint16_t* tile) {
  const uint16_t* data = static_cast<const uint16_t*>(w.data);
  const int64_t sr = w.stride_row, sc = w.stride_col;
  if (sc == 1 && sr % 2 == 0 && n0 + TILE_COLS <= ne) {
    // w's rows hold k: a pair (k, k + 1) is one 32-bit word, so the tile is a 16 x 16
    // transpose of words (rows n -> rows q; rows a whole number of words apart).
    transpose_words(data + n0 * sr + k0, sr, tile);
    return;
  }
  if (sr == 1 && n0 + TILE_COLS <= ne) {
    // A transposed view (the input gradient): rows k and k + 1 of memory hold 16 n each.
    for (int q = 0; q < 16; ++q)
      interleave_rows(data + (k0 + 2 * q) * sc + n0, data + (k0 + 2 * q + 1) * sc + n0, tile + q * 32);
    return;
  }
  for (int q = 0; q < 16; ++q)  // other strides, or the block's last rows
    for (int n = 0; n < 16; ++n)
      for (int e = 0; e < 2; ++e)
        tile[q * 32 + n * 2 + e] = n0 + n < ne ? data[(n0 + n) * sr + (k0 + 2 * q + e) * sc] : uint16_t{0};
}
#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Block j's panel: its B tiles, [bo / 16][ke / 32], each TILE_ELEMS bf16.
void pack_blocks(void* raw, int64_t j0, int64_t j1) {
  const auto& c = *static_cast<const Context*>(raw);
  const auto& p = *c.p;
  for (int64_t j = c.j0 + j0; j < c.j0 + j1; ++j) {
    const int64_t o = c.outer[j], col = p.idx[j];
    const int64_t ne = block_extent(o, p.block_out, p.w.rows), ke = block_extent(col, p.block_in, p.w.cols);
    uint16_t* dst = reinterpret_cast<uint16_t*>(c.panels + c.offset[j]);
    const int64_t k_tiles = ke / TILE_K;
    StridedMatrix block = p.w;  // the block, as a matrix of its own
    block.data = static_cast<const uint16_t*>(p.w.data) + o * p.block_out * p.w.stride_row +
                 col * p.block_in * p.w.stride_col;
    for (int64_t n16 = 0; n16 < p.block_out / TILE_COLS; ++n16)
      for (int64_t kt = 0; kt < k_tiles; ++kt)
        pack_tile(block, n16 * TILE_COLS, ne, kt * TILE_K, dst + (n16 * k_tiles + kt) * TILE_ELEMS);
  }
}

// y[rows, cols] (+ bias) from the fp32 step result c[32][32].
void store_step(const Context& ctx, const float* c, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  const auto& p = *ctx.p;
  const __mmask16 lo = static_cast<__mmask16>(cols >= 16 ? 0xffff : (1u << cols) - 1);
  const __mmask16 hi = static_cast<__mmask16>(cols >= 32 ? 0xffff : cols <= 16 ? 0 : (1u << (cols - 16)) - 1);
  const __m512 b0 = p.bias ? _mm512_maskz_loadu_ps(lo, p.bias + col0) : _mm512_setzero_ps();
  const __m512 b1 = p.bias ? _mm512_maskz_loadu_ps(hi, p.bias + col0 + 16) : _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 v0 = _mm512_add_ps(_mm512_loadu_ps(c + r * STEP_COLS), b0);
    const __m512 v1 = _mm512_add_ps(_mm512_loadu_ps(c + r * STEP_COLS + 16), b1);
    const int64_t at = (row0 + r) * p.ldy + col0;
    if (p.y_dtype == DType::kFloat32) {
      float* y = static_cast<float*>(p.y) + at;
      _mm512_mask_storeu_ps(y, lo, v0);
      if (hi) _mm512_mask_storeu_ps(y + 16, hi, v1);
    } else {  // round to nearest even, as F.linear's bf16 output
      uint16_t* y = static_cast<uint16_t*>(p.y) + at;
      _mm256_mask_storeu_epi16(y, lo, (__m256i)_mm512_cvtneps_pbh(v0));
      if (hi) _mm256_mask_storeu_epi16(y + 16, hi, (__m256i)_mm512_cvtneps_pbh(v1));
    }
  }
}

// Rows [0, rows) of a (n_in columns) -> tile[k step][tile_rows][32]: each A tile then is
// 1 KiB in one piece, where in place its 16 rows lie a row stride apart (a page each).
// Rows from `rows` up to tile_rows are zeros.
void pack_rows(const uint16_t* a, int64_t lda, int64_t rows, int64_t tile_rows, int64_t n_in, uint16_t* tile) {
  const int64_t k_steps = n_in / TILE_K;
  for (int64_t r = 0; r < tile_rows; ++r) {
    const uint16_t* src = a + r * lda;
    for (int64_t ks = 0; ks < k_steps; ++ks) {
      uint16_t* dst = tile + (ks * tile_rows + r) * TILE_K;
      if (r < rows) _mm512_storeu_si512(dst, _mm512_loadu_si512(src + ks * TILE_K));
      else _mm512_storeu_si512(dst, _mm512_setzero_si512());
    }
  }
}

// Bytes of a packed tile of rows of a (see dense_sparse).
constexpr int64_t TILE_BYTES = int64_t{512} << 10;

void compute_tiles(void* raw, int64_t t0, int64_t t1) {
  const auto& c = *static_cast<const Context*>(raw);
  const auto& p = *c.p;
  const int64_t n_in = p.w.cols, n_out = p.w.rows, bo = p.block_out, bi = p.block_in;
  uint16_t* tile = static_cast<uint16_t*>(aligned_alloc(64, c.tile_m * n_in * sizeof(uint16_t)));
  float* result = static_cast<float*>(aligned_alloc(64, STEP_ROWS * STEP_COLS * sizeof(float)));
  if (tile == nullptr || result == nullptr) {
    __atomic_store_n(&const_cast<Context&>(c).failed, 1, __ATOMIC_RELAXED);
    free(tile);
    free(result);
    return;
  }
  TileScope tiles;
  int64_t packed = -1;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t mt = t / c.n_rows, br = c.br0 + t % c.n_rows;
    const int64_t m0 = mt * c.tile_m, rows_tile = min64(c.tile_m, p.m - m0);
    const int64_t tile_rows = index::ceil_div(rows_tile, STEP_ROWS) * STEP_ROWS;
    if (mt != packed) {
      pack_rows(p.a_bf16 + m0 * p.lda, p.lda, rows_tile, tile_rows, n_in, tile);
      packed = mt;
    }
    const int64_t jb = p.ptr[br], je = p.ptr[br + 1];
    const int64_t ne = block_extent(br, bo, n_out);
    for (int64_t r0 = 0; r0 < rows_tile; r0 += STEP_ROWS) {
      const int64_t rows = min64(STEP_ROWS, rows_tile - r0);
      for (int64_t col0 = 0; col0 < ne; col0 += STEP_COLS) {
        const bool two = bo - col0 > TILE_COLS;  // a second column tile in this block row
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t j = jb; j < je; ++j) {
          const int64_t col = p.idx[j], k_tiles = block_extent(col, bi, n_in) / TILE_K;
          const uint16_t* panel = reinterpret_cast<const uint16_t*>(c.panels + c.offset[j]);
          const uint16_t* b0 = panel + (col0 / TILE_COLS) * k_tiles * TILE_ELEMS;
          const uint16_t* a0 = tile + ((col * bi / TILE_K) * tile_rows + r0) * TILE_K;
          for (int64_t kt = 0; kt < k_tiles; ++kt) {
            _tile_loadd(4, a0 + kt * tile_rows * TILE_K, 64);
            _tile_loadd(5, a0 + (kt * tile_rows + TILE_ROWS) * TILE_K, 64);
            _tile_loadd(6, b0 + kt * TILE_ELEMS, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(2, 5, 6);
            if (two) {
              _tile_loadd(7, b0 + (k_tiles + kt) * TILE_ELEMS, 64);
              _tile_dpbf16ps(1, 4, 7);
              _tile_dpbf16ps(3, 5, 7);
            }
          }
        }
        _tile_stored(0, result, STEP_COLS * 4);
        _tile_stored(1, result + TILE_COLS, STEP_COLS * 4);
        _tile_stored(2, result + TILE_ROWS * STEP_COLS, STEP_COLS * 4);
        _tile_stored(3, result + TILE_ROWS * STEP_COLS + TILE_COLS, STEP_COLS * 4);
        store_step(c, result, m0 + r0, rows, br * bo + col0, min64(two ? STEP_COLS : TILE_COLS, ne - col0));
      }
    }
  }
  free(tile);
  free(result);
}

// ============================================================== weight gradient
// dw[block] = dy[:, block rows].T @ x[:, block cols], M in steps of 32 (a tile's k): A tiles
// are dy transposed (16 rows of the block x 32 m), B tiles x pair-interleaved (16 pairs of m
// x 16 columns x 2). Both are packed once for all of M, zero-padded at every edge, so any
// shape fits:
//   dy_t[block row][m step][block_out][32]      (A tile: 16 consecutive rows of a step)
//   x_v[block col][m step][block_in / 16][16][32]  (B tile: one 16-column group)
// Each block then keeps its 2 x 2 C tiles (32 x 32; a 64- or 128-wide block in parts) over
// all of M and stores them once, converted. Blocks of one block row go together, so that
// its dy_t panel (M x block_out) is read from L2.

struct SampledContext {
  const SampledProblem* p;
  uint16_t* dy_t;
  uint16_t* x_v;
  int64_t steps;  // of 32 rows of M
  int failed;
};

// 16 columns [c0, c0 + 16) of rows m0 + 2q, m0 + 2q + 1 of src (rows x cols, leading
// dimension ld), pair-interleaved into tile rows q = 0..15 (zeros past the edges).
void interleave_step(const uint16_t* src, int64_t ld, int64_t rows, int64_t cols, int64_t m0, int64_t c0,
                     uint16_t* tile) {
  for (int q = 0; q < 16; ++q) {
    const int64_t m = m0 + 2 * q;
    if (m + 1 < rows && c0 + 16 <= cols) {
      interleave_rows(src + m * ld + c0, src + (m + 1) * ld + c0, tile + q * 32);
      continue;
    }
    for (int n = 0; n < 16; ++n)
      for (int e = 0; e < 2; ++e)
        tile[q * 32 + n * 2 + e] = m + e < rows && c0 + n < cols ? src[(m + e) * ld + c0 + n] : uint16_t{0};
  }
}

void pack_steps(void* raw, int64_t s0, int64_t s1) {
  const auto& c = *static_cast<const SampledContext*>(raw);
  const auto& p = *c.p;
  const int64_t bo = p.block_out, bi = p.block_in;
  alignas(64) uint16_t pairs[TILE_ELEMS];
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t m0 = s * TILE_K;
    for (int64_t c0 = 0; c0 < p.n; c0 += 16) {  // dy: interleave, then transpose the words
      const int64_t br = c0 / bo, i0 = c0 % bo;
      interleave_step(p.dy_bf16, p.ldd, p.m, p.n, m0, c0, pairs);
      transpose_words(pairs, 32, c.dy_t + ((br * c.steps + s) * bo + i0) * TILE_K);
    }
    const int64_t nb_rows = index::num_blocks(p.n, bo);  // rows of a partial last block row past n
    for (int64_t i = index::ceil_div(p.n, 16) * 16; i < nb_rows * bo; ++i)
      memset(c.dy_t + (((nb_rows - 1) * c.steps + s) * bo + i % bo) * TILE_K, 0, TILE_K * sizeof(uint16_t));
    for (int64_t c0 = 0; c0 < p.k; c0 += 16) {
      const int64_t bc = c0 / bi, g = (c0 % bi) / 16;
      interleave_step(p.x_bf16, p.ldx, p.m, p.k, m0, c0, c.x_v + ((bc * c.steps + s) * (bi / 16) + g) * TILE_ELEMS);
    }
    const int64_t nb_cols = index::num_blocks(p.k, bi);  // groups of a partial last block column past k
    for (int64_t c0 = index::ceil_div(p.k, 16) * 16; c0 < nb_cols * bi; c0 += 16)
      memset(c.x_v + (((nb_cols - 1) * c.steps + s) * (bi / 16) + (c0 % bi) / 16) * TILE_ELEMS, 0,
             TILE_ELEMS * sizeof(uint16_t));
  }
}

void sampled_blocks(void* raw, int64_t j0, int64_t j1) {
  const auto& c = *static_cast<const SampledContext*>(raw);
  const auto& p = *c.p;
  const int64_t bo = p.block_out, bi = p.block_in, groups = bi / 16;
  float* result = static_cast<float*>(aligned_alloc(64, STEP_ROWS * STEP_COLS * sizeof(float)));
  if (result == nullptr) {
    __atomic_store_n(&const_cast<SampledContext&>(c).failed, 1, __ATOMIC_RELAXED);
    return;
  }
  TileScope tiles;
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t br = p.block_row[j], bc = p.col_idx[j];
    const int64_t ie = block_extent(br, bo, p.n), ke = block_extent(bc, bi, p.k);
    const uint16_t* a_panel = c.dy_t + br * c.steps * bo * TILE_K;
    const uint16_t* b_panel = c.x_v + bc * c.steps * groups * TILE_ELEMS;
    for (int64_t i0 = 0; i0 < bo; i0 += STEP_ROWS) {
      const bool two_rows = bo - i0 > TILE_ROWS;
      for (int64_t q0 = 0; q0 < bi; q0 += STEP_COLS) {
        const bool two_cols = bi - q0 > TILE_COLS;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t s = 0; s < c.steps; ++s) {
          const uint16_t* a = a_panel + (s * bo + i0) * TILE_K;
          const uint16_t* b = b_panel + (s * groups + q0 / 16) * TILE_ELEMS;
          _tile_loadd(4, a, 64);
          _tile_loadd(6, b, 64);
          _tile_dpbf16ps(0, 4, 6);
          if (two_cols) {
            _tile_loadd(7, b + TILE_ELEMS, 64);
            _tile_dpbf16ps(1, 4, 7);
          }
          if (two_rows) {
            _tile_loadd(5, a + TILE_ROWS * TILE_K, 64);
            _tile_dpbf16ps(2, 5, 6);
            if (two_cols) _tile_dpbf16ps(3, 5, 7);
          }
        }
        _tile_stored(0, result, STEP_COLS * 4);
        _tile_stored(1, result + TILE_COLS, STEP_COLS * 4);
        _tile_stored(2, result + TILE_ROWS * STEP_COLS, STEP_COLS * 4);
        _tile_stored(3, result + TILE_ROWS * STEP_COLS + TILE_COLS, STEP_COLS * 4);
        const int64_t rows = min64(two_rows ? STEP_ROWS : TILE_ROWS, ie - i0);
        const int64_t cols = min64(two_cols ? STEP_COLS : TILE_COLS, ke - q0);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t at = (br * bo + i0 + r) * p.ldw + bc * bi + q0;
          for (int64_t h = 0; h < cols; h += 16) {
            const __mmask16 mask = static_cast<__mmask16>(cols - h >= 16 ? 0xffff : (1u << (cols - h)) - 1);
            const __m512 v = _mm512_loadu_ps(result + r * STEP_COLS + h);
            if (p.dw_dtype == DType::kFloat32)
              _mm512_mask_storeu_ps(static_cast<float*>(p.dw) + at + h, mask, v);
            else
              _mm256_mask_storeu_epi16(static_cast<uint16_t*>(p.dw) + at + h, mask, (__m256i)_mm512_cvtneps_pbh(v));
          }
        }
      }
    }
  }
  free(result);
}

}  // namespace

int64_t sampled_scratch_elems(const SampledProblem& p) {
  const int64_t steps = index::ceil_div(p.m, TILE_K);
  const int64_t padded_n = index::num_blocks(p.n, p.block_out) * p.block_out;
  const int64_t padded_k = index::num_blocks(p.k, p.block_in) * p.block_in;
  return steps * TILE_K * (padded_n + padded_k);
}

bool sampled(const SampledProblem& p, ParallelFor parallel_for, uint16_t* scratch) {
  if (p.nnz == 0) return true;
  SampledContext c{&p, scratch, nullptr, index::ceil_div(p.m, TILE_K), 0};
  c.x_v = scratch + c.steps * TILE_K * index::num_blocks(p.n, p.block_out) * p.block_out;
  if (c.steps > 0) parallel_for(c.steps, pack_steps, &c);
  parallel_for(p.nnz, sampled_blocks, &c);
  return c.failed == 0;
}

bool dense_sparse(const DenseSparseProblem& p, ParallelFor parallel_for, const int32_t* outer,
                  const int64_t* panel_offset, float* panels, int64_t br0, int64_t br1) {
  Context c{&p, outer, panel_offset, panels, br0, br1 - br0, 0, p.ptr[br0], 0};
  const int64_t n_blocks = p.ptr[br1] - c.j0;
  if (n_blocks > 0) parallel_for(n_blocks, pack_blocks, &c);
  if (p.m == 0 || c.n_rows == 0) return true;
  // A tile of rows of a, packed, of about TILE_BYTES: it stays in L2 across the block rows.
  const int64_t step_bytes = STEP_ROWS * (p.w.cols > 0 ? p.w.cols : 1) * 2;
  const int64_t steps = TILE_BYTES / step_bytes;
  c.tile_m = min64(steps < 1 ? 1 : steps, index::ceil_div(p.m, STEP_ROWS)) * STEP_ROWS;
  parallel_for(index::ceil_div(p.m, c.tile_m) * c.n_rows, compute_tiles, &c);
  return c.failed == 0;
}
#else  // never dispatched: the launcher finds no AMX in such a build
bool dense_sparse(const DenseSparseProblem&, ParallelFor, const int32_t*, const int64_t*, float*, int64_t,
                  int64_t) {
  return false;
}
int64_t sampled_scratch_elems(const SampledProblem&) { return 0; }
bool sampled(const SampledProblem&, ParallelFor, uint16_t*) { return false; }
#endif

}  // namespace amx
}  // namespace cpu
}  // namespace sparsekern

#if defined(__clang__) && defined(SK_AMX)
#pragma clang attribute pop
#endif

// Launchers of the CPU element-sparse kernels: the weight's nonzeros packed in index order,
// the scratch of the transposed tiles, then the kernels of the active instruction set (the
// run-time choice made in bsmm_cpu.cpp; AMX has no element kernels: it runs the AVX-512 ones).
#include "esmm_cpu.h"

#include "scratch.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>

#define SK_DECLARE_KERNELS(ns)                                                                             \
  namespace sparsekern {                                                                                   \
  namespace cpu {                                                                                          \
  namespace ns {                                                                                           \
  void element_plan(int64_t width, int64_t tile_bytes, int min_nv, int max_nv, int64_t* mt, int64_t* chunk); \
  void element_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for, const ElementPlan& plan, \
                            const float* vals);                                                            \
  void element_sampled(const ElementSampled& p, ParallelFor parallel_for, int64_t mt, float* xt,          \
                       float* dyt, float* sums);                                                           \
  }                                                                                                        \
  }                                                                                                        \
  }
SK_DECLARE_KERNELS(portable)
SK_DECLARE_KERNELS(avx2)
SK_DECLARE_KERNELS(avx512)
#undef SK_DECLARE_KERNELS

namespace sparsekern {
namespace cpu {
namespace {

// A transposed tile takes a quarter of a core's L2 (measured best on a 512 KiB-L2 EPYC: half
// of it was 15% slower, an eighth twice as slow); 128 KiB where the size is not known.
int64_t tile_bytes() {
  static const int64_t bytes = [] {
    // SPARSEKERN_ESMM_TILE_KB (for tuning): the tile budget in KiB instead of a quarter of L2.
    if (const char* env = std::getenv("SPARSEKERN_ESMM_TILE_KB")) {
      const int kb = std::atoi(env);
      if (kb > 0) return static_cast<int64_t>(kb) << 10;
    }
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (l2 > 0) return static_cast<int64_t>(l2) / 4;
#endif
    return int64_t{128} << 10;
  }();
  return bytes;
}

void plan_tiles(Isa isa, int64_t width, int min_nv, int max_nv, int64_t* mt, int64_t* chunk) {
  const int64_t bytes = tile_bytes();
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512::element_plan(width, bytes, min_nv, max_nv, mt, chunk);
    case Isa::kAvx2: return avx2::element_plan(width, bytes, min_nv, max_nv, mt, chunk);
    default: return portable::element_plan(width, bytes, min_nv, max_nv, mt, chunk);
  }
}

struct PackTask {
  const ElementDenseSparse* p;
  float* vals;
  int64_t* split;  // null, or [n_out][chunks + 1] (see ElementPlan)
  int64_t chunk, chunks;
};

// vals[j] = w[row of j, idx[j]] for the rows [begin, end): one pass over the nonzeros, so the
// kernels read them in order instead of gathering from the dense weight once per tile of M; and,
// with several chunks, where each chunk begins in each row.
void pack_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const PackTask*>(ctx);
  const StridedMatrix& w = c.p->w;
  for (int64_t r = begin; r < end; ++r) {
    for (int64_t j = c.p->ptr[r]; j < c.p->ptr[r + 1]; ++j) {
      const int64_t at = r * w.stride_row + static_cast<int64_t>(c.p->idx[j]) * w.stride_col;
      if (w.dtype == DType::kFloat32) {
        c.vals[j] = static_cast<const float*>(w.data)[at];
      } else {
        const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(w.data)[at]) << 16;
        __builtin_memcpy(&c.vals[j], &bits, sizeof(float));
      }
    }
    if (c.split == nullptr) continue;
    // Where each chunk's nonzeros begin in row r (its columns ascend).
    int64_t* split = c.split + r * (c.chunks + 1);
    int64_t j = c.p->ptr[r];
    for (int64_t q = 0; q < c.chunks; ++q) {
      while (j < c.p->ptr[r + 1] && c.p->idx[j] < q * c.chunk) ++j;
      split[q] = j;
    }
    split[c.chunks] = c.p->ptr[r + 1];
  }
}

// SPARSEKERN_ESMM_NV (1, 2, 4 or 8; for tests and tuning): the dense x sparse products' tile
// width in vectors of M, the reduction split into as many chunks as that width needs, instead of
// the choice below; 0 when unset.
int forced_vectors() {
  static const int v = [] {
    const char* env = std::getenv("SPARSEKERN_ESMM_NV");
    const int n = env ? std::atoi(env) : 0;
    return n == 1 || n == 2 || n == 4 || n == 8 ? n : 0;
  }();
  return v;
}

// Vectors of the active kernels that make `rows` rows of M (at least one).
int vectors_of(Isa isa, int64_t rows) {
  int64_t lanes, chunk;
  plan_tiles(isa, 1, 1, 1, &lanes, &chunk);  // a one-vector tile: mt = the lanes of a vector
  return rows > lanes ? static_cast<int>(rows / lanes) : 1;
}

// Tiles of 32 rows of M (4 AVX2 vectors, 2 AVX-512 ones), unless the reduction must be split
// for them to stay in L2 and the chunks would hold fewer than about 48 nonzeros a row (each
// chunk costs a row its running sums' load and store): then 16 rows. Measured at x[2048, 2048]
// @ W[8192, 2048].T, densities 1/16 to 1/256, interleaved: on a 2-core EPYC (AVX2, 512 KiB L2)
// 32 rows in 2 chunks won at 1/16, 16 rows unchunked below; on a 2-core Xeon (2 MiB L2) 32 rows
// unchunked won or tied at every density with AVX2 and with AVX-512, where 64 and 128 rows (the
// widest tile that fits, the choice before) were up to 1.7x slower.
void choose_tiles(Isa isa, const ElementDenseSparse& p, int64_t* mt, int64_t* chunk) {
  if (const int forced = forced_vectors()) return plan_tiles(isa, p.w.cols, forced, forced, mt, chunk);
  const int wide = vectors_of(isa, 32);
  plan_tiles(isa, p.w.cols, wide, wide, mt, chunk);
  const int64_t chunks = (p.w.cols + *chunk - 1) / *chunk;
  if (chunks == 1 || p.nnz >= 48 * p.w.rows * chunks) return;
  const int narrow = vectors_of(isa, 16);
  plan_tiles(isa, p.w.cols, narrow, narrow, mt, chunk);
}

}  // namespace

bool esmm_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for) {
  const Isa isa = active_isa();
  ElementPlan plan{};
  choose_tiles(isa, p, &plan.mt, &plan.chunk);
  // At least one chunk: an empty reduction (w.cols == 0) still writes y (the bias, or zeros).
  plan.chunks = p.w.cols > 0 ? (p.w.cols + plan.chunk - 1) / plan.chunk : 1;
  const int64_t tiles = (p.m + plan.mt - 1) / plan.mt;
  // Enough tiles for every thread: deal them out, one parallel region for the whole product.
  plan.workers = p.threads <= 1 || tiles >= 2 * p.threads ? (p.threads > 1 ? p.threads : 1) : 0;
  const int64_t per_set = (plan.chunk + p.w.rows) * plan.mt;
  const int64_t split_words = plan.chunks > 1 ? p.w.rows * (plan.chunks + 1) : 0;  // int64, as 2 floats
  const int64_t packed = (p.nnz + 1) & ~int64_t{1};  // the values, in index order
  thread_local KeptScratch kept;
  float* const base = kept.at_least(packed + 2 * split_words + (plan.workers > 0 ? plan.workers : 1) * per_set + 16);
  if (base == nullptr) return false;
  int64_t* const split = split_words ? reinterpret_cast<int64_t*>(base + packed) : nullptr;
  float* const scratch = base + packed + 2 * split_words;
  float* const vals = base;
  plan.split = split;
  plan.scratch = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
  PackTask pack{&p, vals, split, plan.chunk, plan.chunks};
  parallel_for(p.w.rows, pack_task, &pack);
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512: avx512::element_dense_sparse(p, parallel_for, plan, vals); break;
    case Isa::kAvx2: avx2::element_dense_sparse(p, parallel_for, plan, vals); break;
    default: portable::element_dense_sparse(p, parallel_for, plan, vals); break;
  }
  return true;
}

bool esmm_sampled(const ElementSampled& p, ParallelFor parallel_for) {
  const Isa isa = active_isa();
  int64_t mt, chunk;
  plan_tiles(isa, p.k, 1, 8, &mt, &chunk);  // the widest tile that fits unchunked (dW splits no reduction)
  thread_local KeptScratch kept;
  float* const xt = kept.at_least(p.k * mt + p.n * mt + p.nnz);
  if (xt == nullptr) return false;
  float* const dyt = xt + p.k * mt;
  float* const sums = dyt + p.n * mt;
  switch (isa) {
    case Isa::kAmx:
    case Isa::kAvx512: avx512::element_sampled(p, parallel_for, mt, xt, dyt, sums); break;
    case Isa::kAvx2: avx2::element_sampled(p, parallel_for, mt, xt, dyt, sums); break;
    default: portable::element_sampled(p, parallel_for, mt, xt, dyt, sums); break;
  }
  return true;
}

}  // namespace cpu
}  // namespace sparsekern

// See esmm_sparse_operand.h. The listing is three passes (count by chunk of rows, a prefix,
// fill), so the rows of each column come out ascending and every chunk writes its own slots;
// then the kernels of the active instruction set (esmm_sparse_operand_kernels.h).
#include "esmm_sparse_operand.h"

#include <unistd.h>

#include <atomic>

#include "scratch.h"

#define SK_DECLARE_KERNELS(ns)                                                             \
  namespace sparsekern {                                                                   \
  namespace cpu {                                                                          \
  namespace ns {                                                                           \
  void sparse_operand_product(const SparseOperandProduct& p, ParallelFor parallel_for);    \
  }                                                                                        \
  }                                                                                        \
  }
SK_DECLARE_KERNELS(portable)
SK_DECLARE_KERNELS(avx2)
SK_DECLARE_KERNELS(avx512)
#undef SK_DECLARE_KERNELS

namespace sparsekern {
namespace cpu {
namespace {

// What counts as a nonzero, in every pass (NaN does; -0 does not).
inline bool nonzero(float v) { return v != 0.f; }

struct StatsTask {
  const float* a;
  int64_t cols, lda;
  std::atomic<int64_t> nnz{0};
  std::atomic<bool> finite{true};
};

void stats_task(void* ctx, int64_t begin, int64_t end) {
  auto& c = *static_cast<StatsTask*>(ctx);
  int64_t nnz = 0;
  bool finite = true;
  for (int64_t r = begin; r < end; ++r) {
    const float* row = c.a + r * c.lda;
    int64_t count = 0;
    float check = 0.f;  // x - x is 0 for finite x and NaN for Inf and NaN
    for (int64_t j = 0; j < c.cols; ++j) {
      count += nonzero(row[j]);
      check += row[j] - row[j];
    }
    nnz += count;
    finite = finite && check == 0.f;
  }
  c.nnz += nnz;
  if (!finite) c.finite = false;
}

struct ListTask {
  const float* a;
  int64_t lda;
  int64_t* next;  // [chunks * cols + 1]: counts, then (after the prefix) each list's next slot
  SparseOperandListing* listing;
  SparseOperandEntry* entries;
};

void count_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ListTask*>(ctx);
  const SparseOperandListing& l = *c.listing;
  for (int64_t q = begin; q < end; ++q) {
    int64_t* counts = c.next + q * l.cols;
    for (int64_t s = 0; s < l.cols; ++s) counts[s] = 0;
    const int64_t r1 = l.rows < (q + 1) * l.chunk_rows ? l.rows : (q + 1) * l.chunk_rows;
    for (int64_t r = q * l.chunk_rows; r < r1; ++r) {
      const float* row = c.a + r * c.lda;
      for (int64_t s = 0; s < l.cols; ++s) counts[s] += nonzero(row[s]);
    }
  }
}

void fill_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ListTask*>(ctx);
  const SparseOperandListing& l = *c.listing;
  for (int64_t q = begin; q < end; ++q) {
    int64_t* next = c.next + q * l.cols;
    const int64_t r0 = q * l.chunk_rows, r1 = l.rows < r0 + l.chunk_rows ? l.rows : r0 + l.chunk_rows;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = c.a + r * c.lda;
      for (int64_t s = 0; s < l.cols; ++s)
        if (nonzero(row[s])) c.entries[next[s]++] = {static_cast<int32_t>(r - r0), row[s]};
    }
  }
}

// A cache's size in bytes (level 1: data), or `fallback` where sysconf does not say.
int64_t cache_bytes(int level, int64_t fallback) {
  long bytes = -1;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  bytes = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : _SC_LEVEL2_CACHE_SIZE);
#endif
  return bytes > 0 ? static_cast<int64_t>(bytes) : fallback;
}

constexpr int64_t kPanelRowBytes = SPARSE_OPERAND_PANEL_COLS * static_cast<int64_t>(sizeof(float));

// A panel fills L1 (measured on a 2-core EPYC, 32 KiB L1: 128 rows beat 64 and 96 by 5-15%; the
// running sums and the listing stream through without evicting much of it); the running sums of
// a block of columns take half of L2.
int64_t default_chunk_rows() {
  const int64_t rows = cache_bytes(1, 32 << 10) / kPanelRowBytes;
  return rows < 16 ? 16 : (rows > 256 ? 256 : rows);
}

int64_t default_s_block() {
  const int64_t cols = cache_bytes(2, 512 << 10) / 2 / kPanelRowBytes;
  return cols < 64 ? 64 : (cols > 65536 ? 65536 : cols);  // within the forced range, should sysconf misreport L2
}

}  // namespace

OperandStats operand_stats(const float* a, int64_t rows, int64_t cols, int64_t lda, ParallelFor parallel_for) {
  StatsTask task;
  task.a = a;
  task.cols = cols;
  task.lda = lda;
  parallel_for(rows, stats_task, &task);
  return {task.nnz.load(), task.finite.load()};
}

bool esmm_sparse_operand_grad_weight(const SparseOperandGradWeight& p, ParallelFor parallel_for) {
  // out(s, d) = sum_m S[m, s] D[m, d]:
  //   sparse input:  S = x (s = k), D = dy (d = n), out = dw[n, k] written transposed;
  //   sparse dy:     S = dy (s = n), D = x (d = k), out = dw[n, k] as it is.
  const bool si = p.sparse_input;
  const float* sparse = si ? p.x : p.dy;
  const int64_t ld_sparse = si ? p.ldx : p.ldd;
  SparseOperandListing l{};
  l.rows = p.m;
  l.cols = si ? p.k : p.n;
  l.chunk_rows = p.chunk_rows > 0 ? p.chunk_rows : default_chunk_rows();
  l.chunks = (p.m + l.chunk_rows - 1) / l.chunk_rows;
  const int64_t s_block = p.s_block > 0 ? p.s_block : default_s_block();
  const int64_t d_cols = si ? p.n : p.k;
  const int64_t tiles = (d_cols + SPARSE_OPERAND_PANEL_COLS - 1) / SPARSE_OPERAND_PANEL_COLS;
  const int64_t items = tiles * ((l.cols + s_block - 1) / s_block);
  const int64_t workers = items < (p.threads > 1 ? p.threads : 1) ? items : (p.threads > 1 ? p.threads : 1);

  // The lists' bounds first (their count sizes the entries), kept between calls like all scratch.
  const int64_t lists = l.chunks * l.cols;
  thread_local KeptScratch kept_ptr, kept_entries, kept_work;
  int64_t* next = reinterpret_cast<int64_t*>(kept_ptr.at_least(4 * (lists + 1)));  // next and ptr
  if (next == nullptr) return false;
  int64_t* ptr = next + lists + 1;
  ListTask list{sparse, ld_sparse, next, &l, nullptr};
  parallel_for(l.chunks, count_task, &list);
  int64_t nnz = 0;
  for (int64_t i = 0; i < lists; ++i) {
    ptr[i] = nnz;
    nnz += next[i];
    next[i] = ptr[i];
  }
  ptr[lists] = nnz;
  auto* entries = reinterpret_cast<SparseOperandEntry*>(kept_entries.at_least(2 * nnz + 2));
  const int64_t per_worker = sparse_operand_scratch_per_worker(l.chunk_rows, s_block);
  float* work = kept_work.at_least((workers > 0 ? workers : 1) * per_worker + 16);
  if (entries == nullptr || work == nullptr) return false;
  list.entries = entries;
  parallel_for(l.chunks, fill_task, &list);
  l.ptr = ptr;
  l.entries = entries;

  SparseOperandProduct product{};
  product.listing = l;
  product.dense = si ? p.dy : p.x;
  product.ld_dense = si ? p.ldd : p.ldx;
  product.d_cols = d_cols;
  product.out = p.dw;
  product.ld_out = p.k;
  product.out_transposed = si;
  product.s_block = s_block;
  product.workers = workers;
  product.scratch = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t{63});
  if (workers == 0) return true;  // no element of dw (n or k is 0)
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: avx512::sparse_operand_product(product, parallel_for); break;
    case Isa::kAvx2: avx2::sparse_operand_product(product, parallel_for); break;
    default: portable::sparse_operand_product(product, parallel_for); break;
  }
  return true;
}

}  // namespace cpu
}  // namespace sparsekern

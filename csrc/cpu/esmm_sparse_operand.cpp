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

// S[r, s] = a[r * lda + s], or a[s * lda + r] when transposed (S is then a's transpose).
struct ListTask {
  const float* a;
  int64_t lda;
  bool transposed;
  int64_t* next;  // [chunks * cols + 1]: counts, then (after the prefix) each list's next slot
  SparseOperandListing* listing;
  SparseOperandEntry* entries;  // the listing's entries, then one spare slot per chunk
};

void count_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ListTask*>(ctx);
  const SparseOperandListing& l = *c.listing;
  for (int64_t q = begin; q < end; ++q) {
    int64_t* counts = c.next + q * l.cols;
    const int64_t r0 = q * l.chunk_rows, r1 = l.rows < r0 + l.chunk_rows ? l.rows : r0 + l.chunk_rows;
    if (c.transposed) {  // column s of S is a piece of row s of a: one count each
      for (int64_t s = 0; s < l.cols; ++s) {
        const float* piece = c.a + s * c.lda;
        int64_t count = 0;
        for (int64_t r = r0; r < r1; ++r) count += nonzero(piece[r]);
        counts[s] = count;
      }
      continue;
    }
    for (int64_t s = 0; s < l.cols; ++s) counts[s] = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = c.a + r * c.lda;
      for (int64_t s = 0; s < l.cols; ++s) counts[s] += nonzero(row[s]);
    }
  }
}

// Without a branch per entry (a quarter nonzero at random is the worst case of a predictor): every
// entry is written, a zero to its chunk's spare slot, and only a nonzero moves its list on.
void fill_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ListTask*>(ctx);
  const SparseOperandListing& l = *c.listing;
  for (int64_t q = begin; q < end; ++q) {
    int64_t* next = c.next + q * l.cols;
    const int64_t spare = l.ptr[l.chunks * l.cols] + q;
    const int64_t r0 = q * l.chunk_rows, r1 = l.rows < r0 + l.chunk_rows ? l.rows : r0 + l.chunk_rows;
    if (c.transposed) {
      for (int64_t s = 0; s < l.cols; ++s) {
        const float* piece = c.a + s * c.lda;
        int64_t slot = next[s];
        for (int64_t r = r0; r < r1; ++r) {
          const float v = piece[r];
          const bool keep = nonzero(v);
          c.entries[keep ? slot : spare] = {static_cast<int32_t>(r - r0), v};
          slot += keep;
        }
        next[s] = slot;
      }
      continue;
    }
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = c.a + r * c.lda;
      for (int64_t s = 0; s < l.cols; ++s) {
        const float v = row[s];
        const bool keep = nonzero(v);
        c.entries[keep ? next[s] : spare] = {static_cast<int32_t>(r - r0), v};
        next[s] += keep;
      }
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

namespace {

// The listing and scratch of one product, kept by the calling thread between calls.
struct Listed {
  SparseOperandListing listing;
  float* scratch;  // workers * sparse_operand_scratch_per_worker floats, 64-byte aligned
};

// Lists S (rows x cols; S[r, s] = a[r, s], or a[s, r] when transposed) by chunk of rows (three
// passes: count by chunk, a prefix, fill, so the rows of each list come out ascending and every
// chunk writes its own slots) and sizes the workers' scratch. False when out of memory.
bool list_sparse_side(const float* a, int64_t lda, bool transposed, int64_t rows, int64_t cols, int64_t chunk_rows,
                      int64_t s_block, int64_t workers, ParallelFor parallel_for, Listed& out) {
  SparseOperandListing& l = out.listing;
  l.rows = rows;
  l.cols = cols;
  l.chunk_rows = chunk_rows;
  l.chunks = (rows + chunk_rows - 1) / chunk_rows;
  // The lists' bounds first (their count sizes the entries), kept between calls like all scratch.
  const int64_t lists = l.chunks * l.cols;
  thread_local KeptScratch kept_ptr, kept_entries, kept_work;
  int64_t* next = reinterpret_cast<int64_t*>(kept_ptr.at_least(4 * (lists + 1)));  // next and ptr
  if (next == nullptr) return false;
  int64_t* ptr = next + lists + 1;
  ListTask list{a, lda, transposed, next, &l, nullptr};
  parallel_for(l.chunks, count_task, &list);
  int64_t nnz = 0;
  for (int64_t i = 0; i < lists; ++i) {
    ptr[i] = nnz;
    nnz += next[i];
    next[i] = ptr[i];
  }
  ptr[lists] = nnz;
  l.ptr = ptr;
  auto* entries = reinterpret_cast<SparseOperandEntry*>(kept_entries.at_least(2 * (nnz + l.chunks) + 2));
  const int64_t per_worker = sparse_operand_scratch_per_worker(l.chunk_rows, s_block);
  float* work = kept_work.at_least((workers > 0 ? workers : 1) * per_worker + 16);
  if (entries == nullptr || work == nullptr) return false;
  list.entries = entries;
  parallel_for(l.chunks, fill_task, &list);
  l.entries = entries;
  out.scratch = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(work) + 63) & ~uintptr_t{63});
  return true;
}

// Workers for `items` items of work on `threads` threads (at least one thread).
int64_t workers_for(int64_t items, int64_t threads) {
  const int64_t t = threads > 1 ? threads : 1;
  return items < t ? items : t;
}

int64_t items_of(int64_t d_cols, int64_t s_cols, int64_t s_block) {
  return (d_cols + SPARSE_OPERAND_PANEL_COLS - 1) / SPARSE_OPERAND_PANEL_COLS * ((s_cols + s_block - 1) / s_block);
}

void run_product(const SparseOperandProduct& product, ParallelFor parallel_for) {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: avx512::sparse_operand_product(product, parallel_for); break;
    case Isa::kAvx2: avx2::sparse_operand_product(product, parallel_for); break;
    default: portable::sparse_operand_product(product, parallel_for); break;
  }
}

}  // namespace

bool esmm_sparse_operand_grad_weight(const SparseOperandGradWeight& p, ParallelFor parallel_for) {
  // out(s, d) = sum_m S[m, s] D[m, d]:
  //   sparse input:  S = x (s = k), D = dy (d = n), out = dw[n, k] written transposed;
  //   sparse dy:     S = dy (s = n), D = x (d = k), out = dw[n, k] as it is.
  const bool si = p.sparse_input;
  const int64_t s_cols = si ? p.k : p.n, d_cols = si ? p.n : p.k;
  const int64_t chunk_rows = p.chunk_rows > 0 ? p.chunk_rows : default_chunk_rows();
  const int64_t s_block = p.s_block > 0 ? p.s_block : default_s_block();
  const int64_t workers = workers_for(items_of(d_cols, s_cols, s_block), p.threads);
  Listed listed{};
  if (!list_sparse_side(si ? p.x : p.dy, si ? p.ldx : p.ldd, false, p.m, s_cols, chunk_rows, s_block, workers,
                        parallel_for, listed))
    return false;
  if (workers == 0) return true;  // no element of dw (n or k is 0)
  run_product({listed.listing, si ? p.dy : p.x, si ? p.ldd : p.ldx, d_cols, /*dense_transposed=*/false, p.dw, p.k,
               /*out_transposed=*/si, s_block, workers, listed.scratch},
              parallel_for);
  return true;
}

bool esmm_sparse_operand_matmul(const SparseOperandMatmul& p, ParallelFor parallel_for) {
  // out(s, d) = sum_r S[r, s] D[r, d] with S = a transposed (s = t), D = b or b transposed.
  const int64_t chunk_rows = p.chunk_rows > 0 ? p.chunk_rows : default_chunk_rows();
  const int64_t s_block = p.s_block > 0 ? p.s_block : default_s_block();
  const int64_t workers = workers_for(items_of(p.d_dim, p.t_dim, s_block), p.threads);
  Listed listed{};
  if (!list_sparse_side(p.a, p.lda, true, p.r_dim, p.t_dim, chunk_rows, s_block, workers, parallel_for, listed))
    return false;
  if (workers == 0) return true;  // no element of out
  run_product({listed.listing, p.b, p.ldb, p.d_dim, p.b_transposed, p.out, p.d_dim, /*out_transposed=*/false,
               s_block, workers, listed.scratch},
              parallel_for);
  return true;
}

}  // namespace cpu
}  // namespace sparsekern

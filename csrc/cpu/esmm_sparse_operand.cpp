// See esmm_sparse_operand.h. The listing is three passes (count by chunk of rows, a prefix,
// fill), so the rows of each column come out ascending and every chunk writes its own slots;
// then the kernels of the active instruction set (esmm_sparse_operand_kernels.h).
#include "esmm_sparse_operand.h"

#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>

#include "scratch.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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
// The same of a float's bits, in integer ops (no NaN-aware compare): any bit but the sign.
inline bool nonzero_bits(uint32_t bits) { return (bits & 0x7fffffffu) != 0; }
// The bits of the float at p (a copy, not a cast: the compiler makes it one load).
inline uint32_t float_bits(const float* p) {
  uint32_t bits;
  std::memcpy(&bits, p, sizeof(bits));
  return bits;
}

// Bit j of the result: whether p[j] is nonzero (as nonzero_bits says), j < 4 * quads. On x86-64
// the baseline's SSE2 (an and, a compare, a move of the sign bits per 4 entries): the compiler
// leaves the shift-and-or loop scalar there, a compare, a shift and an or per entry.
template <int quads>
inline uint32_t nonzero_mask_of(const float* p) {
  uint32_t mask = 0;
#if defined(__SSE2__)
  const __m128i magnitude = _mm_set1_epi32(0x7fffffff), zero = _mm_setzero_si128();
  for (int q = 0; q < quads; ++q) {
    const __m128i bits = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 4 * q)), magnitude);
    const int is_zero = _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(bits, zero)));
    mask |= static_cast<uint32_t>(~is_zero & 0xf) << (4 * q);
  }
#else
  for (int j = 0; j < 4 * quads; ++j) mask |= static_cast<uint32_t>(nonzero_bits(float_bits(p + j))) << j;
#endif
  return mask;
}

struct StatsTask {
  const float* a;
  int64_t cols, lda, row_step;
  std::atomic<int64_t> nnz{0};
  std::atomic<bool> finite{true};
};

void stats_task(void* ctx, int64_t begin, int64_t end) {
  auto& c = *static_cast<StatsTask*>(ctx);
  int64_t nnz = 0;
  bool finite = true;
  for (int64_t r = begin; r < end; ++r) {
    const float* row = c.a + r * c.row_step * c.lda;
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
  SparseOperandEntry* entries;  // the listing's entries, then kSpareSlots spare slots per chunk
};

// A chunk of S's rows lying as they are is listed kRowBlock rows at a time, and those a group of
// columns at a time, down the block: the block's lines (one a row) and pages stay in L1 and its
// TLB from one group to the next, and each list is written in order. Row by row across all the
// columns instead, every entry went to another list, the lists of a chunk (MBs) far from L1: on the
// EPYC, 2048 x 8192 at a quarter nonzero, 55 ms where a pass over it takes 8; this way, 23-27 ms.
constexpr int64_t kListGroup = 8;
constexpr int64_t kRowBlock = 64;
// Going down a chunk, each row is a cache line of its own, pages apart, which no hardware
// prefetcher follows: the next line of each row (the group after next, kAheadCols columns on) is
// asked for while this group reads it, two groups' passes down the chunk before it is needed.
constexpr int64_t kAheadCols = 2 * kListGroup;

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
    for (int64_t b0 = r0; b0 < r1; b0 += kRowBlock) {  // see kRowBlock
      const int64_t b1 = r1 < b0 + kRowBlock ? r1 : b0 + kRowBlock;
      for (int64_t s0 = 0; s0 < l.cols; s0 += kListGroup) {
        const int64_t group = l.cols - s0 < kListGroup ? l.cols - s0 : kListGroup;
        int64_t count[kListGroup] = {};
        const int64_t ahead = s0 + kAheadCols < l.cols ? kAheadCols : 0;  // see kAheadCols
        for (int64_t r = b0; r < b1; ++r) {
          __builtin_prefetch(c.a + r * c.lda + s0 + ahead);
          const float* row = c.a + r * c.lda + s0;
          for (int64_t j = 0; j < group; ++j) count[j] += nonzero_bits(float_bits(row + j));
        }
        for (int64_t j = 0; j < group; ++j) counts[s0 + j] += count[j];
      }
    }
  }
}

// An entry as one 8-byte word, written with one store: the row within its chunk in the lower
// half, the value's bits in the upper (SparseOperandEntry's layout on a little-endian CPU).
static_assert(sizeof(SparseOperandEntry) == 8 && offsetof(SparseOperandEntry, value) == 4,
              "an entry is a row and a value, in that order");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the listing's entry words assume a little-endian CPU"
#endif
inline uint64_t entry_word(int64_t r, uint32_t value_bits) {
  return static_cast<uint64_t>(value_bits) << 32 | static_cast<uint32_t>(r);
}
inline void store_entry(SparseOperandEntry* entries, int64_t at, uint64_t word) {
  std::memcpy(entries + at, &word, sizeof(word));
}

// Bit j of the result: whether row[j] is nonzero, j < kListGroup.
inline unsigned nonzero_mask(const float* row) {
  static_assert(kListGroup % 4 == 0, "a group is whole quads");
  return nonzero_mask_of<kListGroup / 4>(row);
}

// Columns [0, group) of rows [b0, b1) of a (rows lda apart; its chunk starts at row r0) onto
// their lists, whose next slots next[0, group) are moved on; spare: kSpareSlots entries that take
// what is written for no list; ahead: the columns on to prefetch (kAheadCols, or 0 at a row's end).
// A whole group (kListGroup columns) goes by the mask of each row's nonzeros: the first
// kBranchFree are written without a branch (past the last nonzero, to the spare slots), the rare
// rest in a loop. A branch per entry mispredicted at a quarter of them, and writing every entry
// (zeros to a spare slot) cost a store each. A narrower group (a row's last) writes every entry.
constexpr int kBranchFree = 4;
constexpr int64_t kSpareSlots = kBranchFree;

void fill_group(const float* a, int64_t lda, int64_t r0, int64_t b0, int64_t b1, int64_t group, int64_t ahead,
                int64_t* next, int64_t spare, SparseOperandEntry* entries) {
  // slot[kListGroup] is read, never written, for "no nonzero left" (the spare slots), and
  // slot[kListGroup + 1] written, never read: no store waits on another through memory there.
  int64_t slot[kListGroup + 2];
  for (int64_t j = 0; j < group; ++j) slot[j] = next[j];
  slot[kListGroup] = spare;
  for (int64_t r = b0; r < b1; ++r) {
    __builtin_prefetch(a + r * lda + ahead);  // see kAheadCols
    const float* row = a + r * lda;
    if (group < kListGroup) {
      for (int64_t j = 0; j < group; ++j) {
        const uint32_t bits = float_bits(row + j);
        const bool keep = nonzero_bits(bits);
        store_entry(entries, keep ? slot[j] : spare, entry_word(r - r0, bits));
        slot[j] += keep;
      }
      continue;
    }
    unsigned mask = nonzero_mask(row);
    for (int i = 0; i < kBranchFree; ++i) {
      const unsigned j = static_cast<unsigned>(__builtin_ctz(mask | (1u << kListGroup)));
      const unsigned none_left = j / kListGroup;  // 1 when j is kListGroup
      const int64_t at = slot[j] + none_left * i;  // the spare slots one by one
      store_entry(entries, at, entry_word(r - r0, float_bits(row + (j & (kListGroup - 1)))));
      slot[j + none_left] = at + 1;
      mask &= mask - 1;
    }
    for (; mask != 0; mask &= mask - 1) {
      const unsigned j = static_cast<unsigned>(__builtin_ctz(mask));
      store_entry(entries, slot[j]++, entry_word(r - r0, float_bits(row + j)));
    }
  }
  for (int64_t j = 0; j < group; ++j) next[j] = slot[j];
}

// See fill_group; S transposed (column s of S a piece of row s of a) is written list by list.
void fill_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ListTask*>(ctx);
  const SparseOperandListing& l = *c.listing;
  for (int64_t q = begin; q < end; ++q) {
    int64_t* next = c.next + q * l.cols;
    const int64_t spare = l.ptr[l.chunks * l.cols] + q * kSpareSlots;
    const int64_t r0 = q * l.chunk_rows, r1 = l.rows < r0 + l.chunk_rows ? l.rows : r0 + l.chunk_rows;
    if (c.transposed) {
      // A piece lies contiguous: 32 entries at a time become a mask of their nonzeros (a loop that
      // vectorises) and only its set bits are stored. Storing every entry, zeros to a spare slot,
      // took as long as the product's FMAs (x [1024, 2048] a quarter nonzero times a 512-column W.T,
      // one thread of the Zen 4: the fill 29% of the time, the FMAs 30%).
      for (int64_t s = 0; s < l.cols; ++s) {
        const float* piece = c.a + s * c.lda;
        int64_t slot = next[s];
        int64_t r = r0;
        for (; r + 32 <= r1; r += 32) {
          for (uint32_t mask = nonzero_mask_of<8>(piece + r); mask != 0; mask &= mask - 1) {
            const int j = __builtin_ctz(mask);
            store_entry(c.entries, slot++, entry_word(r + j - r0, float_bits(piece + r + j)));
          }
        }
        for (; r < r1; ++r) {
          const float v = piece[r];
          const bool keep = nonzero(v);
          c.entries[keep ? slot : spare] = {static_cast<int32_t>(r - r0), v};
          slot += keep;
        }
        next[s] = slot;
      }
      continue;
    }
    for (int64_t b0 = r0; b0 < r1; b0 += kRowBlock) {
      const int64_t b1 = r1 < b0 + kRowBlock ? r1 : b0 + kRowBlock;
      int64_t s0 = 0;
      for (; s0 + kListGroup <= l.cols; s0 += kListGroup)
        fill_group(c.a + s0, c.lda, r0, b0, b1, kListGroup, s0 + kAheadCols < l.cols ? kAheadCols : 0, next + s0,
                   spare, c.entries);
      if (s0 < l.cols) fill_group(c.a + s0, c.lda, r0, b0, b1, l.cols - s0, 0, next + s0, spare, c.entries);
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

OperandStats operand_stats(const float* a, int64_t rows, int64_t cols, int64_t lda, int64_t row_step,
                           ParallelFor parallel_for) {
  StatsTask task;
  task.a = a;
  task.cols = cols;
  task.lda = lda;
  task.row_step = row_step;
  parallel_for((rows + row_step - 1) / row_step, stats_task, &task);
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
  auto* entries = reinterpret_cast<SparseOperandEntry*>(kept_entries.at_least(2 * (nnz + l.chunks * kSpareSlots) + 2));
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

SparseOperandStatus esmm_sparse_operand_grad_weight(const SparseOperandGradWeight& p, ParallelFor parallel_for) {
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
    return SparseOperandStatus::kNoMemory;
  if (workers == 0) return SparseOperandStatus::kOk;  // no element of dw (n or k is 0)
  std::atomic<bool> not_finite{false};
  run_product({listed.listing, si ? p.dy : p.x, si ? p.ldd : p.ldx, d_cols, /*dense_transposed=*/false, p.dw, p.k,
               /*out_transposed=*/si, s_block, workers, listed.scratch, p.check_finite ? &not_finite : nullptr},
              parallel_for);
  return not_finite.load() ? SparseOperandStatus::kDenseNotFinite : SparseOperandStatus::kOk;
}

SparseOperandStatus esmm_sparse_operand_matmul(const SparseOperandMatmul& p, ParallelFor parallel_for) {
  // out(s, d) = sum_r S[r, s] D[r, d] with S = a transposed (s = t), D = b or b transposed.
  const int64_t chunk_rows = p.chunk_rows > 0 ? p.chunk_rows : default_chunk_rows();
  const int64_t s_block = p.s_block > 0 ? p.s_block : default_s_block();
  const int64_t workers = workers_for(items_of(p.d_dim, p.t_dim, s_block), p.threads);
  Listed listed{};
  if (!list_sparse_side(p.a, p.lda, true, p.r_dim, p.t_dim, chunk_rows, s_block, workers, parallel_for, listed))
    return SparseOperandStatus::kNoMemory;
  if (workers == 0) return SparseOperandStatus::kOk;  // no element of out
  std::atomic<bool> not_finite{false};
  run_product({listed.listing, p.b, p.ldb, p.d_dim, p.b_transposed, p.out, p.d_dim, /*out_transposed=*/false,
               s_block, workers, listed.scratch, p.check_finite ? &not_finite : nullptr},
              parallel_for);
  return not_finite.load() ? SparseOperandStatus::kDenseNotFinite : SparseOperandStatus::kOk;
}

}  // namespace cpu
}  // namespace sparsekern

// See esmm_sparse_operand.h. The listing is three passes (count by chunk of rows, a prefix,
// fill), so the rows of each column come out ascending and every chunk writes its own slots.
#include "esmm_sparse_operand.h"

#include <atomic>

#include "esmm_cpu.h"

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
  int64_t rows, cols, lda, chunk_rows;
  int64_t* counts;  // [chunks][cols]: counted, then each chunk's first slot per column
  int32_t* row_idx;
  float* vals;
};

void count_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ListTask*>(ctx);
  for (int64_t q = begin; q < end; ++q) {
    int64_t* counts = c.counts + q * c.cols;
    for (int64_t j = 0; j < c.cols; ++j) counts[j] = 0;
    const int64_t r1 = c.rows < (q + 1) * c.chunk_rows ? c.rows : (q + 1) * c.chunk_rows;
    for (int64_t r = q * c.chunk_rows; r < r1; ++r) {
      const float* row = c.a + r * c.lda;
      for (int64_t j = 0; j < c.cols; ++j) counts[j] += nonzero(row[j]);
    }
  }
}

void fill_task(void* ctx, int64_t begin, int64_t end) {
  const auto& c = *static_cast<const ListTask*>(ctx);
  for (int64_t q = begin; q < end; ++q) {
    int64_t* next = c.counts + q * c.cols;
    const int64_t r1 = c.rows < (q + 1) * c.chunk_rows ? c.rows : (q + 1) * c.chunk_rows;
    for (int64_t r = q * c.chunk_rows; r < r1; ++r) {
      const float* row = c.a + r * c.lda;
      for (int64_t j = 0; j < c.cols; ++j) {
        if (!nonzero(row[j])) continue;
        const int64_t at = next[j]++;
        c.row_idx[at] = static_cast<int32_t>(r);
        c.vals[at] = row[j];
      }
    }
  }
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

// Enough chunks of rows to spread over the threads, few enough that the counts stay small.
int64_t list_chunks(int64_t rows) { return rows < 16 ? 1 : 16; }

int64_t count_columns(const float* a, int64_t rows, int64_t cols, int64_t lda, int64_t* counts, int64_t* col_ptr,
                      ParallelFor parallel_for) {
  const int64_t chunks = list_chunks(rows);
  ListTask task{a, rows, cols, lda, (rows + chunks - 1) / chunks, counts, nullptr, nullptr};
  parallel_for(chunks, count_task, &task);
  // Column j's slots begin at col_ptr[j]; chunk q's part of them after chunks 0..q-1's.
  int64_t total = 0;
  for (int64_t j = 0; j < cols; ++j) {
    col_ptr[j] = total;
    for (int64_t q = 0; q < chunks; ++q) {
      const int64_t n = counts[q * cols + j];
      counts[q * cols + j] = total;
      total += n;
    }
  }
  col_ptr[cols] = total;
  return total;
}

void fill_columns(const float* a, int64_t rows, int64_t cols, int64_t lda, int64_t* counts, int32_t* row_idx,
                  float* vals, ParallelFor parallel_for) {
  const int64_t chunks = list_chunks(rows);
  ListTask task{a, rows, cols, lda, (rows + chunks - 1) / chunks, counts, row_idx, vals};
  parallel_for(chunks, fill_task, &task);
}

bool esmm_sparse_operand_grad_weight(const SparseOperandGradWeight& p, ParallelFor parallel_for) {
  // The element product y[r, f] = sum_c at[c, r] w[f, c] over w's listed nonzeros, with the
  // reduction c over the m rows of both operands and w the sparse side's transpose:
  //   sparse input:  r = n (at = dy), f = k (w = x.T),  y = dw;
  //   sparse dy:     r = k (at = x),  f = n (w = dy.T), y = dw.T, written transposed.
  const bool si = p.sparse_input;
  ElementDenseSparse e{};
  e.a = si ? p.dy : p.x;
  e.lda = si ? p.ldd : p.ldx;
  e.m = si ? p.n : p.k;
  e.w = StridedMatrix{nullptr, DType::kFloat32, si ? p.k : p.n, p.m, 0, 0};
  e.bias = nullptr;
  e.ptr = p.col_ptr;
  e.idx = p.row_idx;
  e.nnz = p.nnz;
  e.y = p.dw;
  e.ldy = p.k;
  e.threads = p.threads;
  e.a_transposed = true;
  e.vals = p.vals;
  e.y_transposed = !si;
  return esmm_dense_sparse(e, parallel_for);
}

}  // namespace cpu
}  // namespace sparsekern

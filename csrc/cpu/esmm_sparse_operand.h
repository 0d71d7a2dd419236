// The dense weight gradient dW = dy.T @ x of a layer whose input x or output gradient dy is
// mostly exact zeros (activation sparsity: AbsTopK, ReLU): the sparse side is listed by
// column and the product runs as the element kernel's dense x element-sparse product, so it
// costs what the sparse side's nonzeros cost. Torch-free; csrc/bindings.cpp checks and calls.
#pragma once

#include <stdint.h>

#include "bsmm_cpu.h"  // ParallelFor

namespace sparsekern {
namespace cpu {

// a[rows, cols] (fp32, rows contiguous, leading dimension lda): how many entries are nonzero
// (NaN counts) and whether every entry is finite. One pass, in parallel.
struct OperandStats {
  int64_t nnz;
  bool finite;
};
OperandStats operand_stats(const float* a, int64_t rows, int64_t cols, int64_t lda, ParallelFor parallel_for);

// The nonzeros of a[rows, cols] column by column, in two steps so the caller can allocate in
// between: count_columns fills col_ptr[cols + 1] (int64) and counts (scratch of
// list_chunks(rows) * cols int64, kept for the fill) and returns nnz; fill_columns then writes
// row_idx[nnz] and vals[nnz], rows ascending within a column.
int64_t list_chunks(int64_t rows);
int64_t count_columns(const float* a, int64_t rows, int64_t cols, int64_t lda, int64_t* counts, int64_t* col_ptr,
                      ParallelFor parallel_for);
void fill_columns(const float* a, int64_t rows, int64_t cols, int64_t lda, int64_t* counts, int32_t* row_idx,
                  float* vals, ParallelFor parallel_for);

// dw[n, k] = sum_m dy[m, n] x[m, k] (fp32, rows contiguous; dw's leading dimension k), walking
// the nonzeros of one side listed by count_columns and fill_columns: sparse_input (x's columns: col_ptr[k + 1])
// or not (dy's columns: col_ptr[n + 1]). Every element of dw is written. False when scratch
// could not be allocated (nothing written then).
struct SparseOperandGradWeight {
  const float* dy;
  int64_t ldd;
  const float* x;
  int64_t ldx;
  int64_t m, n, k;
  bool sparse_input;
  const int64_t* col_ptr;
  const int32_t* row_idx;
  const float* vals;
  int64_t nnz;
  float* dw;
  int64_t threads;
};
bool esmm_sparse_operand_grad_weight(const SparseOperandGradWeight& p, ParallelFor parallel_for);

}  // namespace cpu
}  // namespace sparsekern

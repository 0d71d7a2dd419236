// The dense weight gradient dW = dy.T @ x of a layer whose input x or output gradient dy is
// mostly exact zeros (activation sparsity: AbsTopK, ReLU), and the dense products x @ W.T and
// dy @ W of such a layer: the sparse side is listed by chunk of rows and walked, the other side
// read densely in panels that sit in L1, so it costs what the sparse side's nonzeros cost
// (esmm_sparse_operand_kernels.h). Torch-free; csrc/bindings.cpp checks and calls.
#pragma once

#include <stdint.h>

#include <atomic>

#include "bsmm_cpu.h"  // ParallelFor

// Columns of the dense side per panel (every instruction set: 8 AVX2, 4 AVX-512 vectors).
#define SPARSE_OPERAND_PANEL_COLS 64

namespace sparsekern {
namespace cpu {

// Rows 0, row_step, 2 row_step, ... of a[rows, cols] (fp32, rows contiguous, leading dimension
// lda): how many entries are nonzero (NaN counts) and whether every entry is finite. One pass
// over those rows, in parallel (row_step > 1: a sample, to choose a product by).
struct OperandStats {
  int64_t nnz;
  bool finite;
};
OperandStats operand_stats(const float* a, int64_t rows, int64_t cols, int64_t lda, int64_t row_step,
                           ParallelFor parallel_for);

// What a product with a sparse operand came to: done; no scratch could be allocated (nothing
// written); or, when asked to check, the dense side holds an Inf or NaN, which a skipped zero of
// the sparse side would have met (0 * inf is NaN in the dense product: out is then partly written,
// and the caller runs the dense product instead).
enum class SparseOperandStatus { kOk, kNoMemory, kDenseNotFinite };

// One listed nonzero: its row within its chunk of rows, and its value.
struct SparseOperandEntry {
  int32_t row;
  float value;
};

// The nonzeros of a sparse operand S [rows, cols], chunk of rows by chunk (chunk_rows each, the
// last one short), column by column within a chunk, rows ascending: those of chunk q and
// column s are entries[ptr[q * cols + s] .. ptr[q * cols + s + 1]). S is a matrix in memory or
// the transpose of one (the products below: a layer's input is S transposed).
struct SparseOperandListing {
  int64_t rows, cols, chunk_rows, chunks;
  const int64_t* ptr;  // [chunks * cols + 1]
  const SparseOperandEntry* entries;
};

// out(s, d) = sum_r S[r, s] D[r, d] for S listed (listing) and D [rows, d_cols] dense (fp32):
// D[r, d] = dense[r * ld_dense + d], or dense[d * ld_dense + r] when dense_transposed;
// out[s * ld_out + d], or out[d * ld_out + s] when out_transposed. Every element of
// out is written. The columns of S in blocks of s_block (running sums kept in L2); work dealt to
// `workers` workers, each with sparse_operand_scratch_per_worker floats of scratch (64-byte aligned).
// dense_not_finite, when not null, is set if any entry of D is an Inf or NaN (the first block of
// columns of S copies and checks every chunk of each panel column tile, those without a nonzero
// too); the work then stops early.
struct SparseOperandProduct {
  SparseOperandListing listing;
  const float* dense;
  int64_t ld_dense, d_cols;
  bool dense_transposed;
  float* out;
  int64_t ld_out;
  bool out_transposed;
  int64_t s_block, workers;
  float* scratch;
  std::atomic<bool>* dense_not_finite;
};
inline int64_t sparse_operand_scratch_per_worker(int64_t chunk_rows, int64_t s_block) {
  return (chunk_rows + s_block) * SPARSE_OPERAND_PANEL_COLS;
}

// dw[n, k] = sum_m dy[m, n] x[m, k] (fp32, rows contiguous; dw's leading dimension k), walking
// the nonzeros of x (sparse_input) or of dy. chunk_rows, s_block: 0 for the launcher's choice
// (a panel of L1's size, running sums of half of L2's), else forced (tests, tuning). Every
// element of dw is written when the status is kOk. check_finite: report kDenseNotFinite when the
// side read densely holds an Inf or NaN (else its zeros are skipped whatever the other side holds).
struct SparseOperandGradWeight {
  const float* dy;
  int64_t ldd;
  const float* x;
  int64_t ldx;
  int64_t m, n, k;
  bool sparse_input;
  float* dw;
  int64_t threads;
  int64_t chunk_rows = 0, s_block = 0;
  bool check_finite = false;
};
SparseOperandStatus esmm_sparse_operand_grad_weight(const SparseOperandGradWeight& p, ParallelFor parallel_for);

// out[t, d] = sum_r a[t, r] b'[r, d], b' = b [r_dim, d_dim] or, when b_transposed, the transpose
// of b [d_dim, r_dim] (fp32, rows contiguous; out's leading dimension d_dim), walking the nonzeros
// of a [t_dim, r_dim]: the forward pass (a = x, b = W transposed) and the input gradient (a = dy,
// b = W) of a dense layer whose input, or output gradient, is mostly exact zeros. chunk_rows and
// s_block, check_finite and the status as above (b is the side read densely).
struct SparseOperandMatmul {
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  int64_t t_dim, r_dim, d_dim;
  bool b_transposed;
  float* out;
  int64_t threads;
  int64_t chunk_rows = 0, s_block = 0;
  bool check_finite = false;
};
SparseOperandStatus esmm_sparse_operand_matmul(const SparseOperandMatmul& p, ParallelFor parallel_for);

}  // namespace cpu
}  // namespace sparsekern

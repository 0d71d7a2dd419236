// Launchers of the CPU element-sparse kernels (esmm: a dense operand times a weight sparse
// entry by entry): torch-free, raw pointers and sizes. csrc/bindings.cpp checks the arguments
// and calls these; esmm_kernels.h holds the kernels, compiled once per instruction set.
#pragma once

#include <stdint.h>

#include "bsmm_cpu.h"  // DType, Isa, ParallelFor, StridedMatrix

namespace sparsekern {
namespace cpu {

// y[m, n_out] = a[m, n_in] @ w[n_out, n_in].T (+ bias) over w's nonzeros, listed by a CSR
// index over w's rows: ptr[n_out + 1], idx[nnz] (columns, ascending within a row). Only the
// listed entries of w are read.
// Forward: w = W, (row_ptr, col_idx). Input gradient: w = W.T (strides swapped), (col_ptr, row_idx).
// a: fp32, rows contiguous (lda). y: fp32, rows contiguous (ldy), every element written.
// bias: fp32[n_out] or null.
struct ElementDenseSparse {
  const float* a;
  int64_t m, lda;
  StridedMatrix w;
  const float* bias;
  const int64_t* ptr;
  const int32_t* idx;
  int64_t nnz;
  float* y;
  int64_t ldy;
  int64_t threads;  // torch's, for the choice of work split
};

// How a dense x element-sparse product is split (the launcher's choice, the kernels' input):
// tiles of mt rows of M; the reduction (a's columns) in chunks of `chunk` columns, so that a
// transposed tile (chunk x mt floats) stays in L2; for more than one chunk, split[n * (chunks
// + 1) + q] is where row n's nonzeros of chunk q begin. workers > 0: the tiles are dealt to that
// many workers, each with scratch of its own (workers x (chunk + n_out) x mt floats); else each
// tile is shared by all threads ((chunk + n_out) x mt floats).
struct ElementPlan {
  int64_t mt, chunk, chunks;
  const int64_t* split;
  int64_t workers;
  float* scratch;
};

// dw[n, k] = dy[m, n].T @ x[m, k] at the nonzeros listed by the CSR index (ptr[n + 1],
// idx[nnz]), exact zeros elsewhere. dy, x: fp32, rows contiguous. dw: fp32, rows contiguous,
// every element written.
struct ElementSampled {
  const float* dy;
  int64_t ldd;
  const float* x;
  int64_t ldx;
  int64_t m, n, k;
  const int64_t* ptr;
  const int32_t* idx;
  int64_t nnz;
  float* dw;
  int64_t ldw;
};

// Both return false when scratch memory could not be allocated (nothing written then).
bool esmm_dense_sparse(const ElementDenseSparse& p, ParallelFor parallel_for);
bool esmm_sampled(const ElementSampled& p, ParallelFor parallel_for);

}  // namespace cpu
}  // namespace sparsekern

// Launchers of the CPU block-sparse kernels: torch-free (raw pointers, sizes, strides).
// csrc/bindings.cpp converts tensors, checks arguments and calls these.
#pragma once

#include <stdint.h>

namespace sparsekern {
namespace cpu {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1 };

// Instruction sets, best last. The kernels are compiled once per set (bsmm_<isa>.cpp) and
// chosen at run time from what the CPU reports. kAmx is AVX-512 plus the AMX tile unit for
// bf16 (bsmm_amx.cpp: the products that fit its tiles, and every bf16 weight gradient);
// everything else runs the AVX-512 kernels there.
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAmx = 3 };

// Parallel loop supplied by the caller (the binding passes at::parallel_for, so the kernels
// share torch's thread pool and torch.set_num_threads): runs body(ctx, begin, end) over
// disjoint contiguous sub-ranges covering [0, n).
using ParallelBody = void (*)(void* ctx, int64_t begin, int64_t end);
using ParallelFor = void (*)(int64_t n, ParallelBody body, void* ctx);

// A strided matrix of either dtype (only the weight is read this way: it is never copied).
struct StridedMatrix {
  const void* data;
  DType dtype;
  int64_t rows, cols, stride_row, stride_col;
};

// y[m, n_out] = a[m, n_in] @ w[n_out, n_in].T (+ bias) over the active blocks of w, which are
// listed by a compressed index over w's block rows: ptr[nb_out + 1], idx[nnz] (block columns).
// a: fp32, rows contiguous (leading dimension lda); or, where dense_sparse_takes_bf16 says
// so, bf16 in a_bf16 instead (a null). y: fp32 or bf16, rows contiguous (ldy), every element
// written. bias: fp32[n_out] or null.
// Forward: w = W, (block_out, block_in), row_ptr / col_idx.
// Input gradient: w = W.T (strides swapped), (block_in, block_out), col_ptr / row_idx.
struct DenseSparseProblem {
  const float* a;
  const uint16_t* a_bf16;
  int64_t m, lda;
  StridedMatrix w;  // [n_out, n_in]
  const float* bias;
  const int32_t* ptr;
  const int32_t* idx;
  int64_t nnz;
  int64_t block_out, block_in;
  void* y;
  DType y_dtype;
  int64_t ldy;
};

// dw[n, k] on the active blocks = dy[m, n].T @ x[m, k]; blocks listed as (block_row[j],
// col_idx[j]), each at most once. dy, x: fp32, rows contiguous; or, where
// sampled_takes_bf16() says so, bf16 in dy_bf16 and x_bf16 instead (dy and x null). dw: fp32
// or bf16, rows contiguous; every element written (exact zeros outside the active blocks).
struct SampledProblem {
  const float* dy;
  const uint16_t* dy_bf16;
  int64_t ldd;
  const float* x;
  const uint16_t* x_bf16;
  int64_t ldx;
  int64_t m, n, k;
  const int32_t* block_row;
  const int32_t* col_idx;
  int64_t nnz;
  int64_t block_out, block_in;
  void* dw;
  DType dw_dtype;
  int64_t ldw;
};

// Whether bsmm_dense_sparse takes a bf16 `a` as it is (AMX), for a bf16 w of n_in columns;
// whether bsmm_sampled takes bf16 dy and x (AMX, any shape).
bool dense_sparse_takes_bf16(int64_t n_in, int64_t block_out, int64_t block_in);
bool sampled_takes_bf16();

// Both return false when scratch memory could not be allocated.
bool bsmm_dense_sparse(const DenseSparseProblem& p, ParallelFor parallel_for);
bool bsmm_sampled(const SampledProblem& p, ParallelFor parallel_for);

// Output memory for the binding: large buffers on 2 MiB boundaries with transparent huge
// pages requested, so that a fresh output costs a few page faults, not one per 4 KiB.
// Null when out of memory; release with free_output.
void* alloc_output(int64_t bytes);
void free_output(void* p);

// Run-time choice of the instruction set.
Isa best_isa();                  // the best this CPU supports
Isa active_isa();                // the one the kernels use now
bool set_active_isa(Isa isa);    // false (and no change) when this CPU lacks it
const char* isa_name(Isa isa);
bool isa_from_name(const char* name, Isa* isa);  // false (and no change) for an unknown name

}  // namespace cpu
}  // namespace sparsekern

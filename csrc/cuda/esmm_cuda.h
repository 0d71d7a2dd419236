// Launchers of the element-sparse (unstructured CSR) CUDA kernels: torch-free, raw pointers,
// sizes and strides in elements, a stream. Implemented in esmm_fwd.cu and esmm_dw.cu (kernels:
// esmm_fwd_kernel.cuh, esmm_dw_kernel.cuh; launch sequences: esmm_plan.cuh); called by
// csrc/bindings.cpp, which checks the arguments and the index contents first.
//
// An index is compressed (CSR over the outer dimension): the entries of outer o are positions
// [ptr[o], ptr[o + 1]) of idx, inner indices ascending. Pointers are int32 or int64 (layouts
// of 2^31 nonzeros or more), inner indices int32. Whatever the index holds, the kernels clamp
// every pointer to [0, nnz] and skip inner indices outside their range: a malformed index
// gives wrong numbers, never an access outside the buffers. Weight entries off the index are
// never read. Every launcher returns the launch status.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "launch_types.h"

namespace sparsekern {
namespace cuda {

enum class PtrType : int { kInt32 = 0, kInt64 = 1 };

// out[M, N] = a[M, K] @ B[K, N] (+ bias[N]), B sparse with its entries listed per column n
// (an output feature): (idx[p], n) for p in [ptr[n], ptr[n + 1]), of value b[n * sbn + idx[p] * sbk].
//   forward:    a = x,        B = weight.T: n = output feature, ptr/idx = row_ptr/col_idx,
//               sbn = weight.stride(0), sbk = weight.stride(1)
//   grad_input: a = grad_out, B = weight:   n = input feature,  ptr/idx = col_ptr/row_idx,
//               sbn = weight.stride(1), sbk = weight.stride(0), no bias
// `packed` is scratch of nnz elements of dtype (B's values in index order, gathered first).
// Every element of out is written.
struct EsmmFwdArgs {
  const void* a;
  const void* b;
  const void* bias;  // may be null
  void* out;
  void* packed;
  const void* ptr;  // N + 1 entries of ptr_type
  PtrType ptr_type;
  const int32_t* idx;  // nnz entries
  int64_t nnz;
  int64_t M, K, N;
  int64_t sam, sak;  // a strides
  int64_t sbn, sbk;  // B strides (see above)
  int64_t som, son;  // out strides
  int64_t sbias;
  DType dtype;  // of a, b, bias, out and packed alike
};
cudaError_t esmm_fwd(const EsmmFwdArgs& args, cudaStream_t stream);

// dW = g[M, N].T @ x[M, K] at the entries of a CSR index over dW's N rows (columns in [0, K)):
// out[n * swn + k * swk] for each entry (n, k); nothing else of out is touched (the caller
// zero-fills it). `sums` is scratch of nnz floats that the caller zero-fills: the kernel adds
// partial sums into it atomically, then a second kernel rounds them into out.
struct EsmmDwArgs {
  const void* g;  // grad_out
  const void* x;
  void* out;
  float* sums;
  const void* ptr;  // N + 1 entries of ptr_type
  PtrType ptr_type;
  const int32_t* idx;
  int64_t nnz;
  int64_t M, N, K;
  int64_t sgm, sgn;
  int64_t sxm, sxk;
  int64_t swn, swk;  // out strides
  DType dtype;       // of g, x and out
};
cudaError_t esmm_dw(const EsmmDwArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekern

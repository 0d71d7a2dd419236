// Launchers of the CUDA kernels (torch-free: raw pointers, sizes in elements, strides in
// elements, a stream). Implemented in bsmm_fwd.cu and bsmm_dw.cu; called by the binding
// in csrc/bindings.cpp, which checks the arguments first.
//
// Index tensors are int32 (sparsekern.layout.BlockLayout). Entries of the weight outside
// the listed blocks are never read. Every launcher returns the launch status.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "launch_types.h"

namespace sparsekern {
namespace cuda {

// out[M, N] = a[M, K] @ B[K, N] (+ bias[N]), B block-sparse with blocks of block_k x block_n,
// listed per block column j: blocks (idx[p], j) for p in [ptr[j], ptr[j + 1]).
//   forward:    a = x,        B = weight.T (B(k, n) = weight[n, k]), ptr/idx = row_ptr/col_idx,
//               block_k = block_in, block_n = block_out
//   grad_input: a = grad_out, B = weight   (B(k, n) = weight[k, n]), ptr/idx = col_ptr/row_idx,
//               block_k = block_out, block_n = block_in, no bias
// Element (k, n) of B is at b[k * sbk + n * sbn]. Every element of out is written.
struct FwdArgs {
  const void* a;
  const void* b;
  const void* bias;  // may be null
  void* out;
  const int32_t* ptr;  // ceil(N / block_n) + 1 entries
  const int32_t* idx;  // nnz entries
  int64_t nnz;
  int64_t M, K, N;
  int64_t sam, sak;  // a strides
  int64_t sbk, sbn;  // B strides
  int64_t som, son;  // out strides
  int64_t sbias;
  int block_k, block_n;  // each one of 16, 32, 64, 128
  DType dtype;           // of a, B, bias and out alike
  bool allow_tf32;       // fp32 only: TF32 tensor cores instead of exact fp32 FMAs
};
cudaError_t bsmm_fwd(const FwdArgs& args, cudaStream_t stream);

// dW = grad_out[M, N].T @ x[M, K] on the listed blocks (block_row[p], col_idx[p]) of
// block_out x block_in; nothing else of out is touched (the caller zero-fills it).
// With splits > 1 the batch dimension M is split over `splits` CTAs per block and the
// partial sums are atomically added into out, which must then be fp32 (and zeroed).
struct DwArgs {
  const void* g;  // grad_out
  const void* x;
  void* out;
  const int32_t* block_row;
  const int32_t* col_idx;
  int64_t nnz;
  int64_t M, N, K;
  int64_t sgm, sgn;
  int64_t sxm, sxk;
  int64_t swn, swk;  // out strides
  int block_out, block_in;
  DType dtype;  // of grad_out and x (and of out unless splits > 1)
  bool allow_tf32;
  int splits;  // from bsmm_dw_splits
};
cudaError_t bsmm_dw(const DwArgs& args, cudaStream_t stream);

// How many CTAs share the batch dimension of one block of dW: 1 when there are enough
// blocks to fill the GPU (`num_sms` multiprocessors), else enough to give each ~2 CTAs.
int bsmm_dw_splits(int64_t nnz, int64_t M, int block_out, int block_in, int num_sms);

}  // namespace cuda
}  // namespace sparsekern

// Launcher of the CUDA AbsTopK activation (torch-free: raw pointers, sizes in elements, a
// stream). Implemented in abs_topk.cu (kernel and launch sequence: abs_topk_kernel.cuh); called
// by csrc/bindings.cpp, which checks the arguments first. The algorithm is the Triton backend's
// (sparsekern/activation/triton/abs_topk.py):
//
//   Per row of x[rows, n] (row-major, contiguous), one CTA keeps the k entries of largest
//   magnitude, bitwise, and writes +0 elsewhere. Keys are |x|'s bit patterns (monotone in |x|
//   for IEEE floats; -0 and +0 alike), every NaN one key above inf's, so NaN ranks first. A radix
//   select, 8 bits a pass from the top (four passes for fp32, two for fp16/bf16), each a
//   256-bin histogram in shared memory of the keys whose higher digits match the prefix so far,
//   finds the k-th largest key and how many keys equal to it to keep; one write pass keeps those
//   above it and the first of those equal to it, lowest index first (a CTA-wide count of the ties
//   before each entry: a warp ballot and the warps' totals).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "launch_types.h"

namespace sparsekern {
namespace cuda {

struct AbsTopkArgs {
  const void* x;   // rows x n of dtype, row-major, contiguous
  void* values;    // rows x n of dtype: x's bits where kept, +0 elsewhere
  uint8_t* kept;   // rows x n bytes (bool): 1 where kept
  int64_t rows, n; // rows < 2^31 (one CTA each), n < 2^31
  int64_t k;       // 0 <= k <= n, per row
  DType dtype;
};

// Every element of values and kept is written; x is only read. Returns the launch status
// (cudaErrorInvalidValue, before any launch, for arguments the kernel cannot run).
cudaError_t abs_topk(const AbsTopkArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace sparsekern

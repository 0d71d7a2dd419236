// Launcher of the read-only part of the CUDA top-k projection: radix select + tie scan.
#include "topk_select_kernels.cuh"

namespace sparsekern {
namespace cuda {

int64_t topk_block_cols(int64_t cols) { return topk_block_cols_impl(cols); }

int64_t topk_ctas(int64_t rows, int64_t cols) {
  const int64_t block_c = topk_block_cols_impl(cols);
  return rows * ((cols + block_c - 1) / block_c);
}

cudaError_t topk_select(const TopkSelectArgs& args, cudaStream_t stream) {
  if (const cudaError_t err = topk_select_check(args); err != cudaSuccess) return err;
  return topk_select_sequence(args, [&](auto kernel, int64_t ctas, auto... params) {
    kernel<<<static_cast<unsigned>(ctas), kTopkThreads, 0, stream>>>(params...);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparsekern

// Launcher of the write pass of the CUDA top-k projection.
#include "topk_apply_kernel.cuh"

namespace sparsekern {
namespace cuda {

cudaError_t topk_apply(const TopkApplyArgs& args, cudaStream_t stream) {
  if (const cudaError_t err = topk_apply_check(args); err != cudaSuccess) return err;
  return topk_apply_sequence(args, [&](auto kernel, int64_t ctas, auto... params) {
    kernel<<<static_cast<unsigned>(ctas), kTopkThreads, 0, stream>>>(params...);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparsekern

// Launcher of the CUDA AbsTopK activation (kernel: abs_topk_kernel.cuh).
#include "abs_topk_kernel.cuh"
#include "stream_launch.cuh"

namespace sparsekern {
namespace cuda {

cudaError_t abs_topk(const AbsTopkArgs& args, cudaStream_t stream) {
  return abs_topk_sequence(args, StreamLaunch{stream});
}

}  // namespace cuda
}  // namespace sparsekern

// Launcher of the dense x block-sparse kernel (forward pass and input gradient).
#include "plan.cuh"
#include "stream_launch.cuh"

namespace sparsekern {
namespace cuda {

cudaError_t bsmm_fwd(const FwdArgs& a, cudaStream_t stream) {
  return launch_fwd(a, StreamLaunch{stream});
}

}  // namespace cuda
}  // namespace sparsekern

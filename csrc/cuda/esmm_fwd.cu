// Launcher of the dense x element-sparse kernels (forward pass and input gradient).
#include "esmm_plan.cuh"
#include "stream_launch.cuh"

namespace sparsekern {
namespace cuda {

cudaError_t esmm_fwd(const EsmmFwdArgs& a, cudaStream_t stream) { return esmm_fwd_sequence(a, StreamLaunch{stream}); }

}  // namespace cuda
}  // namespace sparsekern

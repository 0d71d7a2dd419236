// Launcher of the element-sparse weight-gradient kernels (sampled product, then scatter).
#include "esmm_plan.cuh"
#include "stream_launch.cuh"

namespace sparsekern {
namespace cuda {

cudaError_t esmm_dw(const EsmmDwArgs& a, cudaStream_t stream) { return esmm_dw_sequence(a, StreamLaunch{stream}); }

}  // namespace cuda
}  // namespace sparsekern

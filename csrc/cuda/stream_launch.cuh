// The launch step of the launch sequences (plan.cuh's launch_fwd / launch_dw, esmm_plan.cuh's)
// on a CUDA stream, for the .cu launchers; the host emulation (tests/cuda_host/) passes its own.
#pragma once

#include <cuda_runtime.h>

#include "launch_types.h"

namespace sparsekern {
namespace cuda {

struct StreamLaunch {
  cudaStream_t stream;

  template <typename Params>
  cudaError_t operator()(void (*kernel)(Params), Grid grid, int threads, const Params& params) const {
    kernel<<<dim3(static_cast<unsigned>(grid.x), static_cast<unsigned>(grid.y)), threads, 0, stream>>>(params);
    return cudaGetLastError();
  }
};

}  // namespace cuda
}  // namespace sparsekern

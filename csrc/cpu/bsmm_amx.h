// The bf16 kernels on AMX tiles (bsmm_amx.cpp), called by the launcher (bsmm_cpu.cpp) where
// dense_sparse_takes_bf16 / sampled_takes_bf16 say so.
#pragma once

#include <stdint.h>

#include "bsmm_cpu.h"

// Only with compilers that know the AMX intrinsics (GCC 11, clang 12), on x86-64 Linux (which
// hands out the tile state), is bsmm_amx.cpp built for AMX, and AMX offered by the launcher.
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define SK_AMX 1
#endif

namespace sparsekern {
namespace cpu {
namespace amx {

// As the fp32 kernels' dense_sparse (bsmm_kernels.h), for a bf16 `a_bf16` and a bf16 w; false
// when out of scratch memory.
bool dense_sparse(const DenseSparseProblem& p, ParallelFor parallel_for, const int32_t* outer,
                  const int64_t* panel_offset, float* panels, int64_t br0, int64_t br1);

// The weight gradient of bf16 dy_bf16 and x_bf16 over all of M at once, into scratch of
// sampled_scratch_elems(p) bf16 from the caller; writes the active blocks of dw (the caller
// writes the zeros). False when out of scratch memory.
bool sampled(const SampledProblem& p, ParallelFor parallel_for, uint16_t* scratch);
int64_t sampled_scratch_elems(const SampledProblem& p);

}  // namespace amx
}  // namespace cpu
}  // namespace sparsekern

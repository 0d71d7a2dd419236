// Types every CUDA launcher shares (block and element formats): the dtype of a call's
// operands and a launch grid. Torch-free; included by the launcher headers and plan headers.
#pragma once

#include <cstdint>

namespace sparsekern {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Grid {
  int64_t x, y;
};

}  // namespace cuda
}  // namespace sparsekern

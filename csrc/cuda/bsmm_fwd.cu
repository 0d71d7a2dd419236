// Launcher of the dense x block-sparse kernel (forward pass and input gradient).
#include "plan.cuh"

namespace sparsekern {
namespace cuda {

cudaError_t bsmm_fwd(const FwdArgs& a, cudaStream_t stream) {
  if (const cudaError_t err = fwd_check(a); err != cudaSuccess) return err;
  if (fwd_empty(a)) return cudaSuccess;
  return dispatch_fwd(a, [&]<Mode MODE, int TN, bool B_KCONTIG>() {
    using Tile = TileMma<MODE, kFwdTileM, TN, true, B_KCONTIG>;
    const auto p = fwd_params<typename Tile::T, B_KCONTIG>(a);
    const Grid grid = fwd_grid<TN>(a);
    bsmm_fwd_kernel<MODE, TN, B_KCONTIG>
        <<<dim3(static_cast<unsigned>(grid.x), static_cast<unsigned>(grid.y)), Tile::THREADS, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparsekern

// Launcher of the sampled weight-gradient kernel.
#include "plan.cuh"

namespace sparsekern {
namespace cuda {

int bsmm_dw_splits(int64_t nnz, int64_t M, int block_out, int block_in, int num_sms) {
  const int ts = tile_side(block_out < block_in ? block_out : block_in);
  const int64_t ctas = nnz * (block_out / ts) * (block_in / ts);
  if (ctas <= 0 || ctas >= 2 * static_cast<int64_t>(num_sms)) return 1;
  const int64_t steps = ceil_div(M, 16);  // TileMma::TK rows per pipeline step
  int64_t splits = ceil_div(2 * static_cast<int64_t>(num_sms), ctas);
  const int64_t most = steps / 8;  // keep >= 8 steps per CTA
  if (splits > most) splits = most;
  if (splits > 64) splits = 64;
  return splits < 1 ? 1 : static_cast<int>(splits);
}

cudaError_t bsmm_dw(const DwArgs& a, cudaStream_t stream) {
  if (const cudaError_t err = dw_check(a); err != cudaSuccess) return err;
  if (dw_empty(a)) return cudaSuccess;
  return dispatch_dw(a, [&]<Mode MODE, int TS>() {
    using Tile = TileMma<MODE, TS, TS, false, false>;
    const auto p = dw_params<typename Tile::T>(a);
    const Grid grid = dw_grid<TS>(a);
    bsmm_dw_kernel<MODE, TS>
        <<<dim3(static_cast<unsigned>(grid.x), static_cast<unsigned>(grid.y)), Tile::THREADS, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace sparsekern

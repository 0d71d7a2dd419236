// Launcher of the sampled weight-gradient kernel.
#include "plan.cuh"
#include "stream_launch.cuh"

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

cudaError_t bsmm_dw(const DwArgs& a, cudaStream_t stream) { return launch_dw(a, StreamLaunch{stream}); }

}  // namespace cuda
}  // namespace sparsekern

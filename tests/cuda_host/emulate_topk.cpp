// Runs the CUDA top-k projection kernels (csrc/cuda/topk_*.cuh) on the CPU through
// device_shim.h, in the launch order of the launchers (the same sequence templates).
// tests/test_projection_cuda_build.py writes the cases and checks the results against the
// sort-based reference (sparsekern/projection/reference.py); this program only runs them.
//
// Usage: emulate_topk DIR N. For each case i < N it reads DIR/case_i.bin:
//   int64 header[10] = {keys (0: 32-bit, 1: 16-bit), rows, cols, ld_r, ld_c, storage
//   (elements), k, has_forced, block_out (0: no block counts), block_in}, then the weight's
//   storage (4 or 2 bytes an element), then rows x cols forced bytes if has_forced,
// and writes DIR/out_i.bin: the storage after the projection, int64 state[2], int64 nnz,
// int32 block counts (if asked). Every buffer has exactly its size, so AddressSanitizer
// reports any access outside it. Prints "ok <N> cases"; exit status 1 on a launcher error.
#include "device_shim.h"  // first: the CUDA environment on the host

#include <cstdio>
#include <string>
#include <vector>

#include "../../csrc/cuda/topk_apply_kernel.cuh"
#include "../../csrc/cuda/topk_select_kernels.cuh"

using namespace sparsekern::cuda;

namespace {

template <typename T>
bool read(std::FILE* f, T* data, size_t n) {
  return std::fread(data, sizeof(T), n, f) == n;
}

auto emulated_launch = [](auto kernel, int64_t ctas, auto... params) {
  emu::launch(ctas, 1, kTopkThreads, [&] { kernel(params...); });
  return cudaSuccess;
};

template <typename Bits>
bool run_case(const std::string& dir, int i, std::FILE* in, const int64_t* h) {
  const int64_t rows = h[1], cols = h[2], ld_r = h[3], ld_c = h[4], storage = h[5], k = h[6];
  const bool has_forced = h[7] != 0;
  const int block_out = static_cast<int>(h[8]), block_in = static_cast<int>(h[9]);
  std::vector<Bits> w(storage);
  std::vector<uint8_t> forced(has_forced ? rows * cols : 0);
  if (!read(in, w.data(), w.size()) || !read(in, forced.data(), forced.size())) return false;
  const int64_t block_c = topk_block_cols_impl(cols), ctas = rows * ((cols + block_c - 1) / block_c);
  std::vector<int64_t> state(2, -1), ties_before(ctas + 1, -1);  // poisoned: every entry is written
  std::vector<unsigned long long> hist(kTopkBins, 12345), nnz(1, 0);
  const TopkKeys keys = h[0] == 0 ? TopkKeys::k32 : TopkKeys::k16;
  TopkSelectArgs s{w.data(), has_forced ? forced.data() : nullptr, rows, cols, ld_r, ld_c, keys, k,
                   state.data(), hist.data(), ties_before.data()};
  if (topk_select_check(s) != cudaSuccess || topk_select_sequence(s, emulated_launch) != cudaSuccess) return false;
  const int64_t nbr = block_out ? (rows + block_out - 1) / block_out : 0;
  const int64_t nbc = block_out ? (cols + block_in - 1) / block_in : 0;
  std::vector<int32_t> counts(nbr * nbc, 0);
  TopkApplyArgs a{w.data(), s.forced, rows, cols, ld_r, ld_c, keys, state.data(), ties_before.data(), nnz.data(),
                  block_out ? counts.data() : nullptr, block_out, block_in};
  if (topk_apply_check(a) != cudaSuccess || topk_apply_sequence(a, emulated_launch) != cudaSuccess) return false;
  const std::string path = dir + "/out_" + std::to_string(i) + ".bin";
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) return false;
  const int64_t n = static_cast<int64_t>(nnz[0]);
  std::fwrite(w.data(), sizeof(Bits), w.size(), out);
  std::fwrite(state.data(), sizeof(int64_t), 2, out);
  std::fwrite(&n, sizeof n, 1, out);
  std::fwrite(counts.data(), sizeof(int32_t), counts.size(), out);
  return std::fclose(out) == 0;
}

// The launchers' checks reject what the kernels cannot run (before any launch).
bool checks_reject_bad_arguments() {
  std::vector<uint32_t> w(8);
  std::vector<int64_t> state(2), ties(3);
  std::vector<unsigned long long> hist(kTopkBins), nnz(1);
  TopkSelectArgs s{w.data(), nullptr, 2, 4, 4, 1, TopkKeys::k32, 9, state.data(), hist.data(), ties.data()};
  if (topk_select_check(s) == cudaSuccess) return false;  // k > rows * cols
  s.k = 8;
  if (topk_select_check(s) != cudaSuccess) return false;
  s.rows = 0;
  if (topk_select_check(s) == cudaSuccess) return false;
  std::vector<int32_t> counts(1);
  TopkApplyArgs a{w.data(), nullptr, 2, 4, 4, 1, TopkKeys::k32, state.data(), ties.data(), nnz.data(),
                  counts.data(), 16, 24};
  return topk_apply_check(a) != cudaSuccess;  // block side 24
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR N\n", argv[0]);
    return 2;
  }
  if (!checks_reject_bad_arguments()) {
    std::printf("FAIL the launchers' argument checks\n");
    return 1;
  }
  const std::string dir = argv[1];
  const int n = std::stoi(argv[2]);
  for (int i = 0; i < n; ++i) {
    const std::string path = dir + "/case_" + std::to_string(i) + ".bin";
    std::FILE* in = std::fopen(path.c_str(), "rb");
    int64_t h[10];
    const bool ok = in != nullptr && read(in, h, 10) &&
                    (h[0] == 0 ? run_case<uint32_t>(dir, i, in, h) : run_case<uint16_t>(dir, i, in, h));
    if (in != nullptr) std::fclose(in);
    if (!ok) {
      std::printf("FAIL case %d: unreadable, or a launcher rejected it\n", i);
      return 1;
    }
  }
  std::printf("ok %d cases\n", n);
  return 0;
}

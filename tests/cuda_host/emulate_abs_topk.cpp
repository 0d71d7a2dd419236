// Runs the CUDA AbsTopK kernel (csrc/cuda/abs_topk_kernel.cuh) on the CPU through device_shim.h,
// in the launch sequence of the launcher. tests/test_abs_topk_cuda_build.py writes the cases
// and checks the results against the reference; this program only runs them.
//
// Usage: emulate_abs_topk DIR N. For each case i < N it reads DIR/case_i.bin:
//   int64 header[4] = {dtype (0: fp32, 1: fp16, 2: bf16), rows, n, k}, then x (rows x n, 4 or 2
//   bytes an element),
// and writes DIR/out_i.bin: values (rows x n, x's element size), then kept (rows x n bytes). The
// outputs start poisoned (all bits set; kept 0xAA), so an element the kernel does not write
// shows; every buffer has exactly its size, so AddressSanitizer reports any access outside it.
// Prints "ok <N> cases"; exit status 1 on a launcher error.
#include "device_shim.h"  // first: the CUDA environment on the host

#include <cstdio>
#include <string>
#include <vector>

#include "../../csrc/cuda/abs_topk_kernel.cuh"

using namespace sparsekern::cuda;

namespace {

template <typename T>
bool read(std::FILE* f, T* data, size_t n) {
  return std::fread(data, sizeof(T), n, f) == n;
}

auto emulated_launch = [](auto kernel, Grid grid, int threads, const auto& params) {
  emu::launch(grid.x, grid.y, threads, [&] { kernel(params); });
  return cudaSuccess;
};

template <typename Bits>
bool run_case(const std::string& dir, int i, std::FILE* in, const int64_t* h) {
  const int64_t rows = h[1], n = h[2], k = h[3];
  std::vector<Bits> x(rows * n), values(rows * n, static_cast<Bits>(~Bits(0)));
  std::vector<uint8_t> kept(rows * n, 0xAA);
  if (!read(in, x.data(), x.size())) return false;
  const AbsTopkArgs a{x.data(), values.data(), kept.data(), rows, n, k, static_cast<DType>(h[0])};
  if (abs_topk_sequence(a, emulated_launch) != cudaSuccess) return false;
  const std::string path = dir + "/out_" + std::to_string(i) + ".bin";
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) return false;
  std::fwrite(values.data(), sizeof(Bits), values.size(), out);
  std::fwrite(kept.data(), 1, kept.size(), out);
  return std::fclose(out) == 0;
}

// The launcher's checks reject what the kernel cannot run (before any launch); empty shapes
// launch nothing.
bool checks_reject_bad_arguments() {
  std::vector<uint32_t> x(8), v(8);
  std::vector<uint8_t> kept(8);
  AbsTopkArgs a{x.data(), v.data(), kept.data(), 2, 4, 5, DType::kFloat32};
  if (abs_topk_check(a) == cudaSuccess) return false;  // k > n
  a.k = -1;
  if (abs_topk_check(a) == cudaSuccess) return false;
  a.k = 4;
  if (abs_topk_check(a) != cudaSuccess) return false;
  a.values = nullptr;
  if (abs_topk_check(a) == cudaSuccess) return false;
  a.values = v.data();
  a.rows = int64_t{1} << 31;  // one CTA a row: past grid.x
  if (abs_topk_check(a) == cudaSuccess) return false;
  a.rows = 2;
  a.dtype = static_cast<DType>(7);
  if (abs_topk_check(a) == cudaSuccess) return false;
  const AbsTopkArgs empty{nullptr, nullptr, nullptr, 0, 5, 0, DType::kFloat16};
  bool launched = false;
  const cudaError_t err = abs_topk_sequence(empty, [&](auto, Grid, int, const auto&) {
    launched = true;
    return cudaSuccess;
  });
  return err == cudaSuccess && !launched;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR N\n", argv[0]);
    return 2;
  }
  if (!checks_reject_bad_arguments()) {
    std::printf("FAIL the launcher's argument checks\n");
    return 1;
  }
  const std::string dir = argv[1];
  const int n = std::stoi(argv[2]);
  for (int i = 0; i < n; ++i) {
    const std::string path = dir + "/case_" + std::to_string(i) + ".bin";
    std::FILE* in = std::fopen(path.c_str(), "rb");
    int64_t h[4];
    const bool ok = in != nullptr && read(in, h, 4) &&
                    (h[0] == 0 ? run_case<uint32_t>(dir, i, in, h) : run_case<uint16_t>(dir, i, in, h));
    if (in != nullptr) std::fclose(in);
    if (!ok) {
      std::printf("FAIL case %d: unreadable, or the launcher rejected it\n", i);
      return 1;
    }
  }
  std::printf("ok %d cases\n", n);
  return 0;
}

// Runs the element-sparse CUDA kernels (csrc/cuda/esmm_*.cuh) on the CPU through device_shim.h,
// in the launch sequences of the launchers (csrc/cuda/esmm_plan.cuh), for the three products.
// tests/test_element_cuda_build.py writes the cases and checks the results against a float64
// reference; this program only runs them.
//
// Usage: emulate_esmm DIR N. For each case i < N it reads DIR/case_i.bin:
//   int64 header[16] = {dtype (0 fp32, 1 fp16, 2 bf16), pointers int64 (0/1), M, N, K, nnz,
//   has_bias, then (stride 0, stride 1, storage elements) of x [M, K], weight [N, K] and
//   grad_out [M, N]}, then the storages of x and weight, bias [N] if has_bias, the storage of
//   grad_out, row_ptr [N + 1], col_idx [nnz], col_ptr [K + 1], row_idx [nnz];
// and writes DIR/out_i.bin: y [M, N], dx [M, K], dw [N, K], row-major in the dtype. y, dx and the
// packed-value scratch start as NaN (every element must be written before it is read); dw and
// the fp32 sums start at zero, as the binding leaves them. Every buffer has exactly its size,
// so AddressSanitizer reports any access outside it (cases with a malformed index run too: they
// must stay inside the buffers, whatever they compute). Prints "ok <N> cases"; exit status 1 on
// a launcher error.
#include "device_shim.h"  // first: the CUDA environment on the host

#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "../../csrc/cuda/esmm_plan.cuh"

using namespace sparsekern::cuda;

namespace {

template <typename V>
bool read(std::FILE* f, std::vector<V>& v, int64_t n) {
  v.resize(static_cast<size_t>(n));
  return n == 0 || std::fread(v.data(), sizeof(V), v.size(), f) == v.size();
}

auto emulated_launch = [](auto kernel, Grid grid, int threads, const auto& params) {
  emu::launch(grid.x, grid.y, threads, [&] { kernel(params); });
  return cudaSuccess;
};

template <typename T>
T nan_of() {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  if constexpr (sizeof(T) == 4) {
    return nan;
  } else {
    return T(nan);
  }
}

template <typename T, typename Ptr>
bool run_case(const std::string& dir, int i, std::FILE* in, const int64_t* h) {
  const int64_t M = h[2], N = h[3], K = h[4], nnz = h[5];
  const bool has_bias = h[6] != 0;
  std::vector<T> x, w, bias, g;
  std::vector<Ptr> row_ptr, col_ptr;
  std::vector<int32_t> col_idx, row_idx;
  if (!read(in, x, h[9]) || !read(in, w, h[12]) || !read(in, bias, has_bias ? N : 0) || !read(in, g, h[15]) ||
      !read(in, row_ptr, N + 1) || !read(in, col_idx, nnz) || !read(in, col_ptr, K + 1) || !read(in, row_idx, nnz)) {
    return false;
  }
  const DType dtype = h[0] == 0 ? DType::kFloat32 : (h[0] == 1 ? DType::kFloat16 : DType::kBFloat16);
  const PtrType ptr_type = h[1] ? PtrType::kInt64 : PtrType::kInt32;
  std::vector<T> y(M * N, nan_of<T>()), dx(M * K, nan_of<T>()), dw(N * K, T(0.0f)), packed(nnz, nan_of<T>());
  std::vector<float> sums(nnz, 0.0f);

  EsmmFwdArgs f{};
  f.a = x.data();
  f.b = w.data();
  f.bias = has_bias ? bias.data() : nullptr;
  f.out = y.data();
  f.packed = packed.data();
  f.ptr = row_ptr.data();
  f.ptr_type = ptr_type;
  f.idx = col_idx.data();
  f.nnz = nnz;
  f.M = M;
  f.K = K;
  f.N = N;
  f.sam = h[7];
  f.sak = h[8];
  f.sbn = h[10];
  f.sbk = h[11];
  f.som = N;
  f.son = 1;
  f.sbias = 1;
  f.dtype = dtype;
  if (esmm_fwd_sequence(f, emulated_launch) != cudaSuccess) return false;

  // The input gradient: the same kernels on grad_out and the transposed index (see esmm_cuda.h).
  EsmmFwdArgs b = f;
  b.a = g.data();
  b.bias = nullptr;
  b.out = dx.data();
  b.ptr = col_ptr.data();
  b.idx = row_idx.data();
  b.K = N;
  b.N = K;
  b.sam = h[13];
  b.sak = h[14];
  b.sbn = h[11];
  b.sbk = h[10];
  b.som = K;
  packed.assign(nnz, nan_of<T>());
  if (esmm_fwd_sequence(b, emulated_launch) != cudaSuccess) return false;

  EsmmDwArgs d{};
  d.g = g.data();
  d.x = x.data();
  d.out = dw.data();
  d.sums = sums.data();
  d.ptr = row_ptr.data();
  d.ptr_type = ptr_type;
  d.idx = col_idx.data();
  d.nnz = nnz;
  d.M = M;
  d.N = N;
  d.K = K;
  d.sgm = h[13];
  d.sgn = h[14];
  d.sxm = h[7];
  d.sxk = h[8];
  d.swn = K;
  d.swk = 1;
  d.dtype = dtype;
  if (esmm_dw_sequence(d, emulated_launch) != cudaSuccess) return false;

  const std::string path = dir + "/out_" + std::to_string(i) + ".bin";
  std::FILE* out = std::fopen(path.c_str(), "wb");
  if (out == nullptr) return false;
  std::fwrite(y.data(), sizeof(T), y.size(), out);
  std::fwrite(dx.data(), sizeof(T), dx.size(), out);
  std::fwrite(dw.data(), sizeof(T), dw.size(), out);
  return std::fclose(out) == 0;
}

template <typename T>
bool run_dtype(const std::string& dir, int i, std::FILE* in, const int64_t* h) {
  return h[1] ? run_case<T, int64_t>(dir, i, in, h) : run_case<T, int32_t>(dir, i, in, h);
}

// The launchers' checks reject what the kernels cannot run, before any launch.
bool checks_reject_bad_arguments() {
  EsmmFwdArgs f{};
  f.M = 4;
  f.K = 4;
  f.N = 4;
  if (esmm_fwd_check(f) != cudaSuccess) return false;
  f.N = int64_t{1} << 40;  // more feature groups than a grid's y
  if (esmm_fwd_check(f) == cudaSuccess) return false;
  f.N = 4;
  f.nnz = -1;
  if (esmm_fwd_check(f) == cudaSuccess) return false;
  f.nnz = 0;
  f.dtype = static_cast<DType>(7);
  if (esmm_fwd_check(f) == cudaSuccess) return false;
  EsmmDwArgs d{};
  d.M = 4;
  d.N = 4;
  d.K = int64_t{1} << 32;  // column indices are int32
  return esmm_dw_check(d) != cudaSuccess;
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
    int64_t h[16];
    bool ok = in != nullptr && std::fread(h, sizeof(int64_t), 16, in) == 16;
    if (ok) {
      ok = h[0] == 0 ? run_dtype<float>(dir, i, in, h)
                     : (h[0] == 1 ? run_dtype<__half>(dir, i, in, h) : run_dtype<__nv_bfloat16>(dir, i, in, h));
    }
    if (in != nullptr) std::fclose(in);
    if (!ok) {
      std::printf("FAIL case %d: unreadable, or a launcher rejected it\n", i);
      return 1;
    }
  }
  std::printf("ok %d cases\n", n);
  return 0;
}

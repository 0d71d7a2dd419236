// Runs csrc/cuda's kernels on the CPU through device_shim.h (one thread per CUDA thread,
// warp operations modelled from the PTX tables) and checks the three products against a
// double-precision reference: forward, input gradient (the forward kernel on the transposed
// index) and weight gradient (with and without the split batch), in every kernel mode
// (bf16, fp16, tf32, fp32), for square and rectangular blocks, partial edge blocks, aligned
// (cp.async) and unaligned or strided (element-wise) operands, NaN outside the active blocks
// of the weight, NaN-poisoned outputs, and a malformed index (must not read out of bounds:
// build with -fsanitize=address). The launch choices come from csrc/cuda/plan.cuh, as on a GPU.
//
// Prints one line per failed case and "ok <n> cases" at the end; exit status 1 on failure.
// tests/test_cuda_build.py compiles and runs it; no GPU is involved.
#include "device_shim.h"  // first: the CUDA environment on the host

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/cuda/plan.cuh"

using namespace sparsekern::cuda;

namespace {

int failures = 0, cases = 0;

template <typename T>
T to_t(float v);
template <>
float to_t<float>(float v) { return v; }
template <>
__half to_t<__half>(float v) { return __float2half_rn(v); }
template <>
__nv_bfloat16 to_t<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
inline float to_f(float v) { return v; }
inline float to_f(__half v) { return __half2float(v); }
inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Active blocks of an [rows, cols] weight, with both indexes as sparsekern.block.layout builds them.
struct Layout {
  int64_t rows, cols;
  int bo, bi;
  int64_t nbr, nbc;
  std::vector<char> mask;  // nbr x nbc
  std::vector<int32_t> row_ptr, col_idx, block_row, col_ptr, row_idx;
  bool active(int64_t r, int64_t c) const { return mask[(r / bo) * nbc + c / bi]; }
};

Layout make_layout(int64_t rows, int64_t cols, int bo, int bi, double density, std::mt19937& rng) {
  Layout l{rows, cols, bo, bi, (rows + bo - 1) / bo, (cols + bi - 1) / bi, {}, {}, {}, {}, {}, {}};
  std::bernoulli_distribution keep(density);
  l.mask.resize(l.nbr * l.nbc);
  for (auto& m : l.mask) m = keep(rng);
  l.row_ptr.push_back(0);
  for (int64_t r = 0; r < l.nbr; ++r) {
    for (int64_t c = 0; c < l.nbc; ++c)
      if (l.mask[r * l.nbc + c]) {
        l.col_idx.push_back(static_cast<int32_t>(c));
        l.block_row.push_back(static_cast<int32_t>(r));
      }
    l.row_ptr.push_back(static_cast<int32_t>(l.col_idx.size()));
  }
  l.col_ptr.push_back(0);
  for (int64_t c = 0; c < l.nbc; ++c) {
    for (int64_t r = 0; r < l.nbr; ++r)
      if (l.mask[r * l.nbc + c]) l.row_idx.push_back(static_cast<int32_t>(r));
    l.col_ptr.push_back(static_cast<int32_t>(l.row_idx.size()));
  }
  return l;
}

// A strided matrix: element (r, c) at data[r * sr + c * sc]; allocated to the exact extent
// its last element needs, so that AddressSanitizer flags any read past it.
template <typename T>
struct Mat {
  int64_t rows, cols, sr, sc;
  std::vector<T> data;
  T& at(int64_t r, int64_t c) { return data[r * sr + c * sc]; }
  float get(int64_t r, int64_t c) const { return to_f(data[r * sr + c * sc]); }
};

// Storage: "packed" rows (leading dim = cols), "padded" rows (leading dim a multiple of 64:
// 16-byte aligned, partial chunks at the edge) or "transposed" (column-major view).
enum class Storage { kPacked, kPadded, kTransposed };

template <typename T>
Mat<T> make_mat(int64_t rows, int64_t cols, Storage s, float fill) {
  Mat<T> m{rows, cols, 0, 0, {}};
  if (s == Storage::kTransposed) {
    m.sr = 1;
    m.sc = rows;
    m.data.assign((cols - 1) * rows + rows, to_t<T>(fill));
  } else {
    const int64_t ld = s == Storage::kPacked ? cols : (cols + 63) / 64 * 64;
    m.sr = ld;
    m.sc = 1;
    m.data.assign((rows - 1) * ld + cols, to_t<T>(fill));
  }
  return m;
}

template <typename T>
Mat<T> random_mat(int64_t rows, int64_t cols, Storage s, std::mt19937& rng) {
  Mat<T> m = make_mat<T>(rows, cols, s, kNaN);  // padding stays NaN: never read
  std::normal_distribution<float> normal;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) m.at(r, c) = to_t<T>(normal(rng));
  return m;
}

// The launch step of plan.cuh's sequences (launch_fwd, launch_dw), emulated: the kernels
// run as host functions over the grid.
auto emulated_launch = [](auto kernel, Grid grid, int threads, const auto& params) {
  emu::launch(grid.x, grid.y, threads, [&] { kernel(params); });
  return cudaSuccess;
};

double tolerance(DType dtype, bool tf32) {
  switch (dtype) {
    case DType::kBFloat16:
      return 1e-2;  // output rounded to 8 mantissa bits
    case DType::kFloat16:
      return 2e-3;
    default:
      return tf32 ? 5e-3 : 4e-6;  // fp32: the tests' table (tests/conftest.py)
  }
}

const char* mode_name(DType dtype, bool tf32) {
  switch (dtype) {
    case DType::kBFloat16:
      return "bf16";
    case DType::kFloat16:
      return "fp16";
    default:
      return tf32 ? "tf32" : "fp32";
  }
}

// out (rows x cols) against ref; `expect_zero` marks entries that must be exactly 0.
template <typename Get, typename Ref, typename Zero>
void compare(const std::string& name, int64_t rows, int64_t cols, Get get, Ref ref, Zero expect_zero, double tol) {
  ++cases;
  double scale = 0, err = 0;
  int64_t bad_r = -1, bad_c = -1;
  bool finite = true, zeros = true;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) scale = std::max(scale, std::fabs(ref(r, c)));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double v = get(r, c);
      if (!std::isfinite(v)) {
        finite = false;
        bad_r = r, bad_c = c;
      } else if (expect_zero(r, c) && v != 0.0) {
        zeros = false;
        bad_r = r, bad_c = c;
      } else if (std::fabs(v - ref(r, c)) > err) {
        err = std::fabs(v - ref(r, c));
        if (err > tol * std::max(scale, 1.0)) bad_r = r, bad_c = c;
      }
    }
  const bool ok = finite && zeros && err <= tol * std::max(scale, 1.0);
  if (!ok) {
    ++failures;
    std::printf("FAIL %s: finite=%d zeros_off_layout=%d max_err=%.3g scale=%.3g (first bad at %lld, %lld)\n",
                name.c_str(), finite, zeros, err, scale, static_cast<long long>(bad_r), static_cast<long long>(bad_c));
  }
}

// y = x @ W.T + bias and dx = g @ W, both through the dense x block-sparse kernel.
template <typename T>
void run_dense_sparse(bool grad_input, DType dtype, bool tf32, int64_t M, int64_t N, int64_t K, int bo, int bi,
                      Storage xs, Storage ws, bool bias, std::mt19937& rng, const char* tag) {
  const Layout l = make_layout(N, K, bo, bi, 0.5, rng);
  Mat<T> w = random_mat<T>(N, K, ws, rng);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < K; ++c)
      if (!l.active(r, c)) w.at(r, c) = to_t<T>(kNaN);  // must never be read
  // forward: a = x [M, K], out [M, N]; input gradient: a = g [M, N], out [M, K].
  const int64_t inner = grad_input ? N : K, outer = grad_input ? K : N;
  Mat<T> a = random_mat<T>(M, inner, xs, rng);
  Mat<T> b = random_mat<T>(1, N, Storage::kPacked, rng);
  Mat<T> out = make_mat<T>(M, outer, Storage::kPacked, kNaN);  // poisoned: every entry must be written

  FwdArgs args{};
  args.a = a.data.data();
  args.b = w.data.data();
  args.bias = bias ? b.data.data() : nullptr;
  args.out = out.data.data();
  args.nnz = static_cast<int64_t>(l.col_idx.size());
  args.M = M;
  args.K = inner;
  args.N = outer;
  args.sam = a.sr;
  args.sak = a.sc;
  args.som = out.sr;
  args.son = out.sc;
  args.sbias = 1;
  args.dtype = dtype;
  args.allow_tf32 = tf32;
  if (!grad_input) {  // B = W.T
    args.ptr = l.row_ptr.data();
    args.idx = l.col_idx.data();
    args.sbk = w.sc;
    args.sbn = w.sr;
    args.block_k = bi;
    args.block_n = bo;
  } else {  // B = W, the transposed index
    args.ptr = l.col_ptr.data();
    args.idx = l.row_idx.data();
    args.sbk = w.sr;
    args.sbn = w.sc;
    args.block_k = bo;
    args.block_n = bi;
  }
  if (launch_fwd(args, emulated_launch) != cudaSuccess) emu::fail("launch_fwd rejected a valid call");

  auto ref = [&](int64_t m, int64_t o) {
    double s = (!grad_input && bias) ? b.get(0, o) : 0.0;
    for (int64_t i = 0; i < inner; ++i) {
      const int64_t wr = grad_input ? i : o, wc = grad_input ? o : i;
      if (l.active(wr, wc)) s += static_cast<double>(a.get(m, i)) * w.get(wr, wc);
    }
    return s;
  };
  char name[200];
  std::snprintf(name, sizeof name, "%s %s M=%lld N=%lld K=%lld block=(%d,%d) %s", grad_input ? "grad_input" : "forward",
                mode_name(dtype, tf32), static_cast<long long>(M), static_cast<long long>(N),
                static_cast<long long>(K), bo, bi, tag);
  compare(name, M, outer, [&](int64_t r, int64_t c) { return static_cast<double>(out.get(r, c)); }, ref,
          [](int64_t, int64_t) { return false; }, tolerance(dtype, tf32));
}

// dW = g.T @ x on the active blocks, exact zeros elsewhere.
template <typename T>
void run_grad_weight(DType dtype, bool tf32, int64_t M, int64_t N, int64_t K, int bo, int bi, Storage s, int splits,
                     std::mt19937& rng, const char* tag) {
  const Layout l = make_layout(N, K, bo, bi, 0.5, rng);
  Mat<T> g = random_mat<T>(M, N, s, rng);
  Mat<T> x = random_mat<T>(M, K, s, rng);
  // As the binding: zero-filled output; fp32 scratch when the batch is split (atomics).
  const bool scratch = splits > 1;
  Mat<T> out = make_mat<T>(N, K, Storage::kPacked, 0.0f);
  Mat<float> out32 = make_mat<float>(N, K, Storage::kPacked, 0.0f);
  DwArgs args{};
  args.g = g.data.data();
  args.x = x.data.data();
  args.out = scratch ? static_cast<void*>(out32.data.data()) : static_cast<void*>(out.data.data());
  args.block_row = l.block_row.data();
  args.col_idx = l.col_idx.data();
  args.nnz = static_cast<int64_t>(l.col_idx.size());
  args.M = M;
  args.N = N;
  args.K = K;
  args.sgm = g.sr;
  args.sgn = g.sc;
  args.sxm = x.sr;
  args.sxk = x.sc;
  args.swn = K;
  args.swk = 1;
  args.block_out = bo;
  args.block_in = bi;
  args.dtype = dtype;
  args.allow_tf32 = tf32;
  args.splits = splits;
  if (launch_dw(args, emulated_launch) != cudaSuccess) emu::fail("launch_dw rejected a valid call");
  auto ref = [&](int64_t n, int64_t k) {
    if (!l.active(n, k)) return 0.0;
    double s = 0;
    for (int64_t m = 0; m < M; ++m) s += static_cast<double>(g.get(m, n)) * x.get(m, k);
    return s;
  };
  char name[200];
  std::snprintf(name, sizeof name, "grad_weight %s M=%lld N=%lld K=%lld block=(%d,%d) splits=%d %s",
                mode_name(dtype, tf32), static_cast<long long>(M), static_cast<long long>(N),
                static_cast<long long>(K), bo, bi, splits, tag);
  compare(
      name, N, K,
      [&](int64_t r, int64_t c) {
        return scratch ? static_cast<double>(to_f(to_t<T>(out32.get(r, c)))) : static_cast<double>(out.get(r, c));
      },
      ref, [&](int64_t r, int64_t c) { return !l.active(r, c); }, tolerance(dtype, tf32));
}

// A malformed index (out-of-range and negative block numbers, pointers past nnz) must not make
// the kernels read outside their buffers; the values are then meaningless and not checked.
template <typename T>
void run_malformed_index(DType dtype) {
  const int64_t M = 20, N = 48, K = 48;
  std::mt19937 rng(7);
  Mat<T> a = random_mat<T>(M, K, Storage::kPacked, rng);
  Mat<T> w = random_mat<T>(N, K, Storage::kPacked, rng);
  Mat<T> out = make_mat<T>(M, N, Storage::kPacked, 0.0f);
  const std::vector<int32_t> ptr = {0, 2, 1, 9};  // decreasing, and past nnz
  const std::vector<int32_t> idx = {-3, 7, 1};    // negative, past the block grid, valid
  FwdArgs args{};
  args.a = a.data.data();
  args.b = w.data.data();
  args.out = out.data.data();
  args.ptr = ptr.data();
  args.idx = idx.data();
  args.nnz = static_cast<int64_t>(idx.size());
  args.M = M;
  args.K = K;
  args.N = N;
  args.sam = a.sr;
  args.sak = 1;
  args.sbk = 1;
  args.sbn = w.sr;
  args.som = out.sr;
  args.son = 1;
  args.block_k = 16;
  args.block_n = 16;
  args.dtype = dtype;
  if (launch_fwd(args, emulated_launch) != cudaSuccess) emu::fail("launch_fwd rejected the call");
  const std::vector<int32_t> rows = {0, 5, -1}, cols = {-2, 1, 9};
  Mat<T> dw = make_mat<T>(N, K, Storage::kPacked, 0.0f);
  DwArgs d{};
  d.g = a.data.data();  // [M, 48] serves as grad_out
  d.x = a.data.data();
  d.out = dw.data.data();
  d.block_row = rows.data();
  d.col_idx = cols.data();
  d.nnz = 3;
  d.M = M;
  d.N = N;
  d.K = K;
  d.sgm = a.sr;
  d.sgn = 1;
  d.sxm = a.sr;
  d.sxk = 1;
  d.swn = K;
  d.swk = 1;
  d.block_out = 16;
  d.block_in = 16;
  d.dtype = dtype;
  d.splits = 1;
  if (launch_dw(d, emulated_launch) != cudaSuccess) emu::fail("launch_dw rejected the call");
  ++cases;  // passing = reaching here without a sanitizer report
}

template <typename T>
void run_mode(DType dtype, bool tf32, bool full) {
  std::mt19937 rng(1234 + static_cast<int>(dtype) * 10 + tf32);
  const int blocks[][2] = {{16, 16}, {32, 64}, {128, 32}, {64, 128}};
  for (const auto& bl : blocks) {
    // 70 x 100 x 90: nothing a multiple of a block; packed 16-bit rows are not 16-byte aligned
    // (element-wise loads), packed fp32 rows of 100 are.
    run_dense_sparse<T>(false, dtype, tf32, 70, 100, 90, bl[0], bl[1], Storage::kPacked, Storage::kPacked, true, rng,
                        "packed");
    run_dense_sparse<T>(true, dtype, tf32, 70, 100, 90, bl[0], bl[1], Storage::kPacked, Storage::kPacked, false, rng,
                        "packed");
    run_grad_weight<T>(dtype, tf32, 70, 100, 90, bl[0], bl[1], Storage::kPacked, 1, rng, "packed");
    if (!full && bl[0] != 32) continue;
    // Aligned rows with partial 16-byte chunks at the edges: the cp.async path.
    run_dense_sparse<T>(false, dtype, tf32, 70, 100, 90, bl[0], bl[1], Storage::kPadded, Storage::kPadded, true, rng,
                        "padded");
    run_dense_sparse<T>(true, dtype, tf32, 70, 100, 90, bl[0], bl[1], Storage::kPadded, Storage::kPadded, false, rng,
                        "padded");
    run_grad_weight<T>(dtype, tf32, 70, 100, 90, bl[0], bl[1], Storage::kPadded, 1, rng, "padded");
  }
  // Exact multiples, a transposed (column-major) input, a split batch.
  run_dense_sparse<T>(false, dtype, tf32, 128, 128, 128, 32, 32, Storage::kPacked, Storage::kPacked, true, rng,
                      "multiples");
  run_dense_sparse<T>(false, dtype, tf32, 33, 64, 96, 16, 32, Storage::kTransposed, Storage::kPacked, true, rng,
                      "x transposed");
  run_grad_weight<T>(dtype, tf32, 300, 64, 80, 32, 16, Storage::kPadded, 3, rng, "split");
}

}  // namespace

int main(int argc, char** argv) {
  // --quick: every mode, product and block shape on packed operands, the cp.async path on one
  // block shape, copies landing early for bf16 only. Default: everything, both landings.
  const bool full = !(argc > 1 && std::string(argv[1]) == "--quick");
  for (const bool late : {true, false}) {
    emu::late_copies = late;
    const int before = failures;
    run_mode<__nv_bfloat16>(DType::kBFloat16, false, full);
    if (late || full) {
      run_mode<__half>(DType::kFloat16, false, full);
      run_mode<float>(DType::kFloat32, true, full);
      run_mode<float>(DType::kFloat32, false, full);
    }
    if (failures != before) std::printf("(cp.async copies landing %s)\n", late ? "late" : "early");
  }
  run_malformed_index<__half>(DType::kFloat16);
  run_malformed_index<float>(DType::kFloat32);
  if (failures) {
    std::printf("%d of %d cases failed\n", failures, cases);
    return 1;
  }
  std::printf("ok %d cases\n", cases);
  return 0;
}

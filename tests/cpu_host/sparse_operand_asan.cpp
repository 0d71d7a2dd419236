// The products with a sparse operand (csrc/cpu/esmm_sparse_operand*) built with AddressSanitizer
// and run on many small random cases against a double-precision product computed here: the
// listing's spare slots, the panels' edges and the Inf / NaN check must stay inside their
// buffers (tests/test_dense_grad_weight.py builds and runs this). Each case runs in a thread of
// its own, so that the launcher's kept scratch is allocated to that case's size exactly and an
// overflow past it is caught. Prints "ok N cases" when all agree.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "esmm_sparse_operand.h"

namespace sparsekern {
namespace cpu {
static Isa chosen_isa = Isa::kPortable;
Isa active_isa() { return chosen_isa; }  // the launcher's run-time choice, fixed by argv here
}  // namespace cpu
}  // namespace sparsekern

using namespace sparsekern::cpu;

// Two workers' halves on two threads, as torch's pool would split [0, n).
static void two_way(int64_t n, ParallelBody body, void* ctx) {
  std::thread other([&] { body(ctx, n / 2, n); });
  body(ctx, 0, n / 2);
  other.join();
}

struct Case {
  bool matmul, transposed_b, check, inject;
  int64_t rows, s_cols, d_cols, chunk_rows, s_block;
  double density;
};

// One case; false (with a message) on a mismatch.
static bool run_case(const Case& c, std::mt19937& rng, int index) {
  std::uniform_real_distribution<float> value(-2.f, 2.f), unit(0.f, 1.f);
  // The walked side S [rows, s_cols] (for the matmul, a = S transposed: [s_cols, rows]) and the
  // dense side D [rows, d_cols] (b; stored transposed when transposed_b).
  std::vector<float> s(static_cast<size_t>(c.rows * c.s_cols)), d(static_cast<size_t>(c.rows * c.d_cols));
  for (auto& v : s) v = unit(rng) < c.density ? value(rng) : 0.f;
  for (auto& v : d) v = value(rng);
  if (c.inject && !d.empty()) d[rng() % d.size()] = (rng() & 1) ? INFINITY : NAN;
  std::vector<double> want(static_cast<size_t>(c.s_cols * c.d_cols), 0.0);
  bool finite = true;
  for (float v : d) finite = finite && std::isfinite(v);
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t i = 0; i < c.s_cols; ++i)
      if (s[r * c.s_cols + i] != 0.f)
        for (int64_t j = 0; j < c.d_cols; ++j)
          want[i * c.d_cols + j] += double(s[r * c.s_cols + i]) * double(d[r * c.d_cols + j]);
  std::vector<float> out(want.size(), NAN);
  SparseOperandStatus status;
  if (c.matmul) {  // out[t, e] = sum_r a[t, r] b'[r, e] with a = S^T, b' = D
    std::vector<float> a(s.size()), b(d.size());
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t i = 0; i < c.s_cols; ++i) a[i * c.rows + r] = s[r * c.s_cols + i];
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t j = 0; j < c.d_cols; ++j)
        b[c.transposed_b ? j * c.rows + r : r * c.d_cols + j] = d[r * c.d_cols + j];
    SparseOperandMatmul p{a.data(), c.rows, b.data(), c.transposed_b ? c.rows : c.d_cols, c.s_cols, c.rows,
                          c.d_cols, c.transposed_b, out.data(), 2, c.chunk_rows, c.s_block, c.check};
    status = esmm_sparse_operand_matmul(p, two_way);
  } else {  // dw[n, k] = sum_m dy[m, n] x[m, k]: S = x walked (sparse_input) with dy = D, out transposed
    std::vector<float> dw(out.size());
    SparseOperandGradWeight p{d.data(), c.d_cols, s.data(), c.s_cols, c.rows, c.d_cols, c.s_cols,
                              /*sparse_input=*/true, dw.data(), 2, c.chunk_rows, c.s_block, c.check};
    status = esmm_sparse_operand_grad_weight(p, two_way);
    for (int64_t i = 0; i < c.s_cols; ++i)
      for (int64_t j = 0; j < c.d_cols; ++j) out[i * c.d_cols + j] = dw[j * c.s_cols + i];
  }
  const bool empty = c.s_cols == 0 || c.d_cols == 0;
  if (c.check && !finite && !empty) {
    if (status != SparseOperandStatus::kDenseNotFinite) {
      std::printf("case %d: an Inf or NaN of the dense side was not reported\n", index);
      return false;
    }
    return true;  // the caller runs the dense product
  }
  if (status != SparseOperandStatus::kOk) {
    std::printf("case %d: status %d\n", index, static_cast<int>(status));
    return false;
  }
  if (!finite) return true;  // forced walk past an Inf: only its memory safety is checked here
  for (size_t i = 0; i < want.size(); ++i)
    if (!(std::fabs(out[i] - want[i]) <= 1e-4 * (1.0 + std::fabs(want[i])))) {
      std::printf("case %d: element %zu is %g, want %g\n", index, i, out[i], want[i]);
      return false;
    }
  return true;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s isa(portable|avx2|avx512) cases\n", argv[0]);
    return 2;
  }
  const char* names[] = {"portable", "avx2", "avx512"};
  bool known = false;
  for (int i = 0; i < 3; ++i)
    if (std::strcmp(argv[1], names[i]) == 0) chosen_isa = static_cast<Isa>(i), known = true;
  if (!known) return 2;
  const int cases = std::atoi(argv[2]);
  std::mt19937 rng(12345);
  for (int i = 0; i < cases; ++i) {
    std::uniform_int_distribution<int64_t> rows(0, 300), cols(0, 70), dcols(0, 150), chunk(1, 200), block(1, 100);
    const double densities[] = {0.0, 0.05, 0.25, 0.5, 1.0};
    Case c{(rng() & 1) != 0, (rng() & 1) != 0, (rng() & 1) != 0, rng() % 4 == 0, rows(rng), cols(rng), dcols(rng),
           chunk(rng), block(rng), densities[rng() % 5]};
    bool ok = false;
    std::thread worker([&] { ok = run_case(c, rng, i); });  // a fresh thread: fresh kept scratch
    worker.join();
    if (!ok) return 1;
  }
  std::printf("ok %d cases\n", cases);
  return 0;
}

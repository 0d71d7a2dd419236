// Host replay of the CUDA kernels' fragment index math (csrc/cuda/fragments.h) against an
// independent model of ldmatrix and mma.sync written from the PTX ISA tables (ptx_model.h). No GPU needed:
// tests/test_cuda_build.py compiles and runs it. Prints "ok" and exits 0, or lists every
// mismatch and exits 1.
//
// For each operand layout the kernels use, the program
//   1. fills a 16 x 16 tile with distinct values and stores it the way the kernel does,
//   2. takes the shared-memory row each lane points ldmatrix at (fragments.h),
//   3. runs the PTX model of ldmatrix(.trans).x4 to get every lane's four registers,
//   4. checks each 16-bit element against the element the PTX mma fragment table says
//      that lane and register must hold.
// The tf32 and accumulator coordinates are checked against the same tables directly, and a
// full 16 x 8 x 16 product assembled from the modelled fragments is compared with a plain one.
#include <cstdio>
#include <vector>

#include "../../csrc/cuda/fragments.h"
#include "ptx_model.h"

using sparsekern::cuda::frag::RowCol;
namespace frag = sparsekern::cuda::frag;

static int failures = 0;

static void expect(bool ok, const char* what, int lane, int reg, int elem) {
  if (!ok) {
    if (failures < 20) std::printf("MISMATCH %s lane %d reg %d elem %d\n", what, lane, reg, elem);
    ++failures;
  }
}

// ---- PTX model (ptx_model.h) ---------------------------------------------------------
struct Regs {
  int v[32][4][2];  // lane, register, half -> element value
};

template <class Stored>
static Regs ldmatrix_x4(const Stored& stored, const RowCol (&addr)[32], bool trans) {
  Regs out;
  for (int l = 0; l < 32; ++l)
    for (int q = 0; q < 4; ++q)
      for (int h = 0; h < 2; ++h) {
        const ptx::Coord e = ptx::ldmatrix_element(l, h, trans);  // within matrix q
        const RowCol a = addr[8 * q + e.row];
        out.v[l][q][h] = stored(a.row, a.col + e.col);
      }
  return out;
}

static RowCol ptx_a16(int lane, int i) { const ptx::Coord c = ptx::a16(lane, i); return {c.row, c.col}; }
static RowCol ptx_b16(int lane, int i) { const ptx::Coord c = ptx::b16(lane, i); return {c.row, c.col}; }
static RowCol ptx_c(int lane, int i) { const ptx::Coord c = ptx::c(lane, i); return {c.row, c.col}; }
static RowCol ptx_a_tf32(int lane, int i) { const ptx::Coord c = ptx::a_tf32(lane, i); return {c.row, c.col}; }
static RowCol ptx_b_tf32(int lane, int i) { const ptx::Coord c = ptx::b_tf32(lane, i); return {c.row, c.col}; }

// ---- the checks ------------------------------------------------------------------------
static int a_val(int m, int k) { return 1000 + 16 * m + k; }  // distinct values of A[m][k]
static int b_val(int k, int n) { return 5000 + 16 * k + n; }  // distinct values of B[k][n] (16 x 16)

int main() {
  RowCol addr[32];

  // A stored [m][k] (forward: x is k-contiguous), plain ldmatrix.
  for (int l = 0; l < 32; ++l) addr[l] = frag::ldsm_a_mk(l);
  Regs a_mk = ldmatrix_x4([](int r, int c) { return a_val(r, c); }, addr, false);
  // A stored [k][m] (weight gradient: grad_out is n-contiguous), ldmatrix.trans.
  for (int l = 0; l < 32; ++l) addr[l] = frag::ldsm_a_km(l);
  Regs a_km = ldmatrix_x4([](int r, int c) { return a_val(c, r); }, addr, true);
  for (int l = 0; l < 32; ++l)
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        const RowCol e = ptx_a16(l, 2 * r + h);
        expect(a_mk.v[l][r][h] == a_val(e.row, e.col), "A [m][k]", l, r, h);
        expect(a_km.v[l][r][h] == a_val(e.row, e.col), "A [k][m] trans", l, r, h);
      }

  // B stored [n][k] (forward: weight rows are k-contiguous), plain; B stored [k][n] (input
  // and weight gradients), trans. Registers 0, 1 are n tile 0 (n 0..7), 2, 3 n tile 1.
  for (int l = 0; l < 32; ++l) addr[l] = frag::ldsm_b_nk(l);
  Regs b_nk = ldmatrix_x4([](int r, int c) { return b_val(c, r); }, addr, false);
  for (int l = 0; l < 32; ++l) addr[l] = frag::ldsm_b_kn(l);
  Regs b_kn = ldmatrix_x4([](int r, int c) { return b_val(r, c); }, addr, true);
  for (int l = 0; l < 32; ++l)
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        const int tile = r / 2;
        const RowCol e = ptx_b16(l, 2 * (r % 2) + h);
        expect(b_nk.v[l][r][h] == b_val(e.row, e.col + 8 * tile), "B [n][k]", l, r, h);
        expect(b_kn.v[l][r][h] == b_val(e.row, e.col + 8 * tile), "B [k][n] trans", l, r, h);
      }

  // tf32 element coordinates and accumulator coordinates.
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) {
      const RowCol mine = frag::tf32_a(l, i), ptx = ptx_a_tf32(l, i);
      expect(mine.row == ptx.row && mine.col == ptx.col, "tf32 A", l, i, 0);
      const RowCol cm = frag::acc(l, i), cp = ptx_c(l, i);
      expect(cm.row == cp.row && cm.col == cp.col, "accumulator", l, i, 0);
    }
    for (int i = 0; i < 2; ++i) {
      const RowCol mine = frag::tf32_b(l, i), ptx = ptx_b_tf32(l, i);
      expect(mine.row == ptx.row && mine.col == ptx.col, "tf32 B", l, i, 0);
    }
  }

  // A whole 16 x 16 (n tile 0 and 1) x 16 product from the modelled fragments, each lane's
  // accumulators placed by frag::acc, against a plain triple loop: catches any pairing of
  // A and B registers that the element checks above would not.
  for (int layout = 0; layout < 2; ++layout) {
    const Regs& A = layout == 0 ? a_mk : a_km;
    const Regs& B = layout == 0 ? b_nk : b_kn;
    std::vector<long long> c(16 * 16, 0);
    for (int tile = 0; tile < 2; ++tile)
      for (int l = 0; l < 32; ++l)
        for (int ci = 0; ci < 4; ++ci) {
          const RowCol mn = ptx_c(l, ci);
          long long sum = 0;
          // mma semantics: C[m][n] = sum_k A[m][k] B[k][n], with A and B known only through
          // the fragments of all 32 lanes.
          for (int k = 0; k < 16; ++k) {
            long long av = 0, bv = 0;
            for (int l2 = 0; l2 < 32; ++l2)
              for (int i = 0; i < 8; ++i) {
                const RowCol ea = ptx_a16(l2, i);
                if (ea.row == mn.row && ea.col == k) av = A.v[l2][i / 2][i % 2];
              }
            for (int l2 = 0; l2 < 32; ++l2)
              for (int i = 0; i < 4; ++i) {
                const RowCol eb = ptx_b16(l2, i);
                if (eb.row == k && eb.col == mn.col) bv = B.v[l2][2 * tile + i / 2][i % 2];
              }
            sum += av * bv;
          }
          const RowCol out = frag::acc(l, ci);
          c[out.row * 16 + out.col + 8 * tile] = sum;
        }
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        long long want = 0;
        for (int k = 0; k < 16; ++k) want += static_cast<long long>(a_val(m, k)) * b_val(k, n);
        expect(c[m * 16 + n] == want, layout == 0 ? "product [m][k] x [n][k]" : "product [k][m] x [k][n]", m, n, 0);
      }
  }

  if (failures) {
    std::printf("%d mismatches\n", failures);
    return 1;
  }
  std::printf("ok\n");
  return 0;
}

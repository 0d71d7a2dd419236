// An independent model of the warp-level operations the CUDA kernels use, written from the
// PTX ISA tables (not from csrc/cuda): ldmatrix .m8n8.x4(.trans).b16 and the fragment
// layouts of mma.m16n8k16 (.f16/.bf16) and mma.m16n8k8 (.tf32). Used by fragments_check.cpp
// and by the host emulation of the kernels (device_shim.h).
#pragma once

namespace ptx {

struct Coord {
  int row, col;
};

// ldmatrix: matrix q's row r is the 8 consecutive 16-bit elements at the address given by
// lane 8q + r. Lane l receives from matrix q the element (row, col) of that matrix for half h:
//   plain:  row = l / 4,           col = 2 (l % 4) + h
//   .trans: row = 2 (l % 4) + h,   col = l / 4
inline Coord ldmatrix_element(int lane, int half, bool trans) {
  if (!trans) return {lane / 4, 2 * (lane % 4) + half};
  return {2 * (lane % 4) + half, lane / 4};
}

// mma.m16n8k16 .f16/.bf16: elements a0..a7, b0..b3, c0..c3 ("Matrix Fragments for
// mma.m16n8k16 with floating point type"); register r holds elements 2r (low half) and 2r + 1.
inline Coord a16(int lane, int i) {  // (m, k)
  const int g = lane >> 2, t = lane % 4;
  const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
  return {row, t * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
inline Coord b16(int lane, int i) {  // (k, n)
  const int g = lane >> 2, t = lane % 4;
  return {t * 2 + (i & 1) + (i >= 2 ? 8 : 0), g};
}
inline Coord c(int lane, int i) {  // (m, n), both shapes
  const int g = lane >> 2, t = lane % 4;
  return {i < 2 ? g : g + 8, t * 2 + (i & 1)};
}

// mma.m16n8k8 .tf32 ("Matrix Fragments for mma.m16n8k8"): one element per register.
inline Coord a_tf32(int lane, int i) {  // (m, k)
  const int g = lane >> 2, t = lane % 4;
  return {(i == 0 || i == 2) ? g : g + 8, (i < 2) ? t : t + 4};
}
inline Coord b_tf32(int lane, int i) {  // (k, n)
  const int g = lane >> 2, t = lane % 4;
  return {i == 0 ? t : t + 4, g};
}

}  // namespace ptx

// sparsekern._C: the only file that includes torch headers. It checks arguments (so a direct
// call with a wrong shape, dtype or index raises instead of reading out of bounds), turns
// tensors into raw pointers and strides, and calls the torch-free launchers. Kept lean:
// compile time matters on small CI machines.
//
// Sections: common helpers | CPU block-sparse products | CPU element-sparse products | top-k projection (CPU) | CUDA (#ifdef
// SPARSEKERN_WITH_CUDA; block-sparse products, element-sparse products, then top-k projection) | module.
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <initializer_list>
#include <mutex>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

#include "common/block_index.h"
#include "cpu/abs_topk.h"
#include "cpu/bsmm_cpu.h"
#include "cpu/esmm_cpu.h"
#include "cpu/esmm_sparse_operand.h"
#include "cpu/topk.h"
#include "cpu/zero_outside.h"

#ifdef SPARSEKERN_WITH_CUDA  // CUDA headers exist only in a CUDA build of torch
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/abs_topk_cuda.h"
#include "cuda/bsmm_cuda.h"
#include "cuda/esmm_cuda.h"
#include "cuda/topk_cuda.h"
#endif

// setup.py passes the torch version as bare tokens; stringified here (no shell quoting).
#define SK_STRINGIFY2(x) #x
#define SK_STRINGIFY(x) SK_STRINGIFY2(x)
#ifdef SPARSEKERN_TORCH_VERSION
#define SK_TORCH_VERSION SK_STRINGIFY(SPARSEKERN_TORCH_VERSION)
#else
#define SK_TORCH_VERSION "unknown"
#endif

namespace {

namespace idx = sparsekern::index;
using at::Tensor;

// ============================================================ common helpers

// The bytes [first, last) that t's elements span (its strides included); empty when t is.
std::pair<uintptr_t, uintptr_t> byte_span(const Tensor& t) {
  if (t.numel() == 0) return {0, 0};
  int64_t low = 0, high = 0;  // element offsets of the first and last element from data_ptr
  for (int64_t d = 0; d < t.dim(); ++d) (t.stride(d) < 0 ? low : high) += (t.size(d) - 1) * t.stride(d);
  const auto base = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {base + low * t.element_size(), base + (high + 1) * t.element_size()};
}

// Whether a and b may share memory: their spans intersect (conservative for two interleaved
// strided views of one buffer, which then count as overlapping).
bool may_overlap(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.device() != b.device()) return false;
  const auto [a0, a1] = byte_span(a);
  const auto [b0, b1] = byte_span(b);
  return a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1;
}

// A tensor the call writes (`name`) must share no memory with one it reads: the kernels read
// inputs while they write, so an overlap computes nonsense (undefined tensors are skipped).
void check_no_overlap(const std::optional<Tensor>& written, const char* name,
                      std::initializer_list<std::pair<const char*, Tensor>> inputs) {
  if (!written.has_value()) return;
  for (const auto& [input_name, input] : inputs)
    TORCH_CHECK_VALUE(!may_overlap(*written, input), name, " must not overlap ", input_name,
                      " (a kernel would read what it writes)");
}

// Whether two entries of the 2-D t are one memory location (an expanded or as_strided view),
// exactly: with both sides above 1, strides a <= b and sides na, nb, some i*b == j*a with
// 0 < |i| < nb, |j| < na exists iff b/g < na and a/g < nb, g = gcd(a, b).
bool has_internal_overlap(const Tensor& t) {
  if (t.numel() == 0) return false;
  std::vector<std::pair<int64_t, int64_t>> dims;  // (|stride|, size) of the sides above 1
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) dims.emplace_back(std::abs(t.stride(d)), t.size(d));
  for (const auto& [stride, size] : dims)
    if (stride == 0) return true;
  if (dims.size() < 2) return false;
  TORCH_CHECK(dims.size() == 2, "has_internal_overlap: 2-D tensors only");
  std::sort(dims.begin(), dims.end());
  const auto [a, na] = dims[0];
  const auto [b, nb] = dims[1];
  const int64_t g = std::gcd(a, b);
  return b / g < na && a / g < nb;
}

// The weight the projection writes in place: no two entries in one place (the write pass runs
// in parallel, and a location counted twice is kept or zeroed twice).
void check_no_internal_overlap(const Tensor& weight) {
  TORCH_CHECK_VALUE(!has_internal_overlap(weight),
                    "weight has overlapping memory (expanded?); clone() it");
}

void check_block_sides(int64_t block_out, int64_t block_in) {
  for (int64_t side : {block_out, block_in})
    TORCH_CHECK(idx::valid_block_side(side),
                "block sides must each be one of 16, 32, 64, 128, got (", block_out, ", ", block_in, ")");
}

void check_index_tensor(const Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1, name, " must be 1-D, got ", t.dim(), " dimensions");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
}

// A compressed index (ptr over n_outer blocks, idx into it) on `device`: dtypes and lengths.
void check_compressed_shape(const Tensor& ptr, const char* ptr_name, const Tensor& ind, const char* ind_name,
                            int64_t n_outer, const at::Device& device) {
  check_index_tensor(ptr, ptr_name, device);
  check_index_tensor(ind, ind_name, device);
  TORCH_CHECK(ptr.numel() == n_outer + 1, ptr_name, " must have ", n_outer + 1, " entries (blocks + 1), got ",
              ptr.numel());
}

// The same, plus its O(nnz) contents (read on the host: CPU tensors only), so that every
// index lies in [0, n_inner).
void check_compressed(const Tensor& ptr, const char* ptr_name, const Tensor& ind, const char* ind_name,
                      int64_t n_outer, int64_t n_inner) {
  check_compressed_shape(ptr, ptr_name, ind, ind_name, n_outer, at::Device(at::kCPU));
  const int err = idx::check_compressed(ptr.data_ptr<int32_t>(), n_outer, ind.data_ptr<int32_t>(), ind.numel(),
                                        n_inner);
  TORCH_CHECK(err == idx::kIndexOk, "invalid block index (", ptr_name, ", ", ind_name, "): ", idx::describe(err));
}

// Sides from 2^62 on (only stride-0 views have them) are refused: sizes derived from them
// (a side + 1, block counts) must never wrap.
constexpr int64_t kMaxSide = int64_t{1} << 62;

void check_matrix(const Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D, got ", t.dim(), " dimensions");
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK_VALUE(t.size(0) < kMaxSide && t.size(1) < kMaxSide, name, " must have sides below 2^62, got ",
                    t.sizes());
}

// The projection's floor mask (forced): null, or weight-shaped contiguous bool on weight's device.
const uint8_t* forced_mask(const std::optional<Tensor>& forced, const Tensor& weight) {
  if (!forced.has_value()) return nullptr;
  TORCH_CHECK_TYPE(forced->scalar_type() == at::kBool, "forced must be bool, got ", forced->scalar_type());
  TORCH_CHECK_VALUE(forced->sizes() == weight.sizes() && forced->device() == weight.device() &&
                        forced->is_contiguous(),
                    "forced must be a contiguous bool tensor of weight's shape ", weight.sizes(), " on ",
                    weight.device(), ", got ", forced->sizes(), " on ", forced->device());
  check_no_overlap(weight, "weight", {{"forced", *forced}});  // the write pass reads forced
  return reinterpret_cast<const uint8_t*>(forced->data_ptr<bool>());
}

// What a projection plan was made for: the weight (data pointer, shape, strides, dtype, version
// counter) and the floor mask (data pointer and version; 0 and -1 without one). Applying a plan
// to another weight or mask, or after either changed, raises instead of keeping the wrong
// entries (the CPU plan carries its stamp after the kernel's fields).
constexpr int64_t kStampLength = 9;
using PlanStamp = std::array<int64_t, kStampLength>;

int64_t version_of(const Tensor& t) { return t.is_inference() ? -1 : static_cast<int64_t>(t._version()); }

PlanStamp plan_stamp(const Tensor& weight, const std::optional<Tensor>& forced) {
  return {reinterpret_cast<int64_t>(weight.data_ptr()), weight.size(0), weight.size(1), weight.stride(0),
          weight.stride(1), static_cast<int64_t>(weight.scalar_type()), version_of(weight),
          forced ? reinterpret_cast<int64_t>(forced->data_ptr()) : 0, forced ? version_of(*forced) : -1};
}

void check_plan_stamp(const int64_t* stamp, const Tensor& weight, const std::optional<Tensor>& forced,
                      const char* select) {
  const PlanStamp now = plan_stamp(weight, forced);
  TORCH_CHECK_VALUE(std::equal(now.begin(), now.end(), stamp), "the plan was made by ", select,
                    " for another weight or floor mask, or before one of them changed: select again");
}

// A write through raw pointers, made visible to torch as an in-place op's would be (autograd
// then refuses a weight saved for backward and changed since, and an old plan is stale).
void bump_version(const Tensor& t) {
  if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

// The shape and dtype checks of the three products, the same for every device and both
// formats; `dev` is where all of a call's tensors must be. Index *contents* are the device
// sections' business.
void check_linear_forward(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                          const at::Device& dev) {
  check_matrix(x, "x", dev);
  check_matrix(weight, "weight", dev);
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "x must have weight's dtype ", weight.scalar_type(),
              ", got ", x.scalar_type());
  TORCH_CHECK(x.size(1) == weight.size(1), "x must have ", weight.size(1), " columns (weight's in_features), got ",
              x.size(1));
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias must have shape (", weight.size(0),
                ",), got ", bias->sizes());
    TORCH_CHECK(bias->device() == dev, "bias must be on ", dev, ", got ", bias->device());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type(), "bias must have weight's dtype ",
                weight.scalar_type(), ", got ", bias->scalar_type());
  }
}

void check_linear_grad_input(const Tensor& grad_out, const Tensor& weight, const at::Device& dev) {
  check_matrix(grad_out, "grad_out", dev);
  check_matrix(weight, "weight", dev);
  TORCH_CHECK(grad_out.scalar_type() == weight.scalar_type(), "grad_out must have weight's dtype ",
              weight.scalar_type(), ", got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.size(1) == weight.size(0), "grad_out must have ", weight.size(0),
              " columns (weight's out_features), got ", grad_out.size(1));
}

void check_linear_grad_weight(const Tensor& grad_out, const Tensor& x, const at::Device& dev) {
  check_matrix(grad_out, "grad_out", dev);
  check_matrix(x, "x", dev);
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type(), "grad_out must have x's dtype ", x.scalar_type(),
              ", got ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.size(0) == x.size(0), "grad_out and x must have the same number of rows, got ",
              grad_out.size(0), " and ", x.size(0));
}

// The block products': the same, plus the block sides (and the weight gradient's coordinate list).
void check_forward_args(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                        const at::Device& dev, int64_t block_out, int64_t block_in) {
  check_linear_forward(x, weight, bias, dev);
  check_block_sides(block_out, block_in);
}

void check_grad_input_args(const Tensor& grad_out, const Tensor& weight, const at::Device& dev, int64_t block_out,
                           int64_t block_in) {
  check_linear_grad_input(grad_out, weight, dev);
  check_block_sides(block_out, block_in);
}

void check_grad_weight_args(const Tensor& grad_out, const Tensor& x, const Tensor& block_row, const Tensor& col_idx,
                            const at::Device& dev, int64_t block_out, int64_t block_in) {
  check_linear_grad_weight(grad_out, x, dev);
  check_block_sides(block_out, block_in);
  check_index_tensor(block_row, "block_row", dev);
  check_index_tensor(col_idx, "col_idx", dev);
  TORCH_CHECK(block_row.numel() == col_idx.numel(), "block_row and col_idx must have the same length, got ",
              block_row.numel(), " and ", col_idx.numel());
}

// ================================================================= CPU section

namespace cpu = sparsekern::cpu;

void check_cpu_dtype(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16 for the cpu backend, got ", t.scalar_type());
}

// torch's thread pool, with [0, n) handed out in chunks on demand (a few per thread, in
// order) rather than one fixed share each: on a shared machine a thread that loses its core
// for a while then delays the call by its chunk, not by its whole share.
void torch_parallel_for(int64_t n, cpu::ParallelBody body, void* ctx) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || at::in_parallel_region()) {
    body(ctx, 0, n);
    return;
  }
  const int64_t grain = (n + 4 * threads - 1) / (4 * threads);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t begin = next.fetch_add(grain); begin < n; begin = next.fetch_add(grain))
      body(ctx, begin, std::min(n, begin + grain));
  });
}

// fp32 with unit column stride, as the kernels read a dense operand; copies only if needed.
Tensor rows_fp32(const Tensor& t) {
  if (t.scalar_type() == at::kFloat && (t.stride(1) == 1 || t.size(1) <= 1)) return t;
  return t.to(at::kFloat).contiguous();
}

int64_t leading_dim(const Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

cpu::DType dtype_of(const Tensor& t) {
  return t.scalar_type() == at::kFloat ? cpu::DType::kFloat32 : cpu::DType::kBFloat16;
}

cpu::StridedMatrix strided(const Tensor& t) {
  return {t.data_ptr(), dtype_of(t), t.size(0), t.size(1), t.stride(0), t.stride(1)};
}

// A dense operand as the kernels read it: rows contiguous, fp32 (rows_fp32), or bf16 as it is
// where the kernels multiply bf16 (keep_bf16: AMX).
Tensor kernel_rows(const Tensor& t, bool keep_bf16) {
  if (!keep_bf16) return rows_fp32(t);
  return t.stride(1) == 1 || t.size(1) <= 1 ? t : t.contiguous();
}

// Large CPU outputs on huge pages (see cpu::alloc_output): the page faults of a fresh buffer
// would otherwise cost a sizeable part of a sparse product. Through an Allocator, so the
// storage is an ordinary resizable one (resize_ reallocates through it, on huge pages again).
struct HugePageAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* data = cpu::alloc_output(static_cast<int64_t>(bytes));
    TORCH_CHECK(data != nullptr, "sparsekern cpu: out of memory for an output of ", bytes, " bytes");
    return {data, data, &cpu::free_output, at::Device(at::kCPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &cpu::free_output; }
  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }
};

// An output the caller may supply (`out`, e.g. poisoned by the tests; the entry points check
// it overlaps no input first): shape, dtype, layout.
Tensor output(const std::optional<Tensor>& out, at::IntArrayRef shape, const Tensor& like) {
  if (!out.has_value()) {
    int64_t bytes = like.element_size();
    bool overflow = false;  // then at::empty raises its own error
    for (const int64_t side : shape) overflow |= __builtin_mul_overflow(bytes, side, &bytes);
    if (overflow || !like.is_cpu() || bytes < (int64_t{4} << 20)) return at::empty(shape, like.options());
    static HugePageAllocator huge_pages;
    return at::detail::empty_generic(shape, &huge_pages, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                     like.scalar_type(), std::nullopt);
  }
  TORCH_CHECK(out->sizes() == shape, "out must have shape ", shape, ", got ", out->sizes());
  TORCH_CHECK(out->scalar_type() == like.scalar_type() && out->device() == like.device(), "out must be ",
              like.scalar_type(), " on ", like.device(), ", got ", out->scalar_type(), " on ", out->device());
  TORCH_CHECK(out->is_contiguous(), "out must be contiguous");
  return *out;
}

// y[M, n_out] = a[M, n_in] @ w.T over the blocks of (ptr, ind); w may be W or W.T (a view).
Tensor dense_sparse(const Tensor& a, const Tensor& w, const std::optional<Tensor>& bias, const Tensor& ptr,
                    const Tensor& ind, int64_t block_out, int64_t block_in, const std::optional<Tensor>& out) {
  Tensor y = output(out, {a.size(0), w.size(0)}, a);
  // (The argument checks made a's and w's dtypes equal.)
  const bool bf16_a = a.scalar_type() == at::kBFloat16 && cpu::dense_sparse_takes_bf16(w.size(1), block_out, block_in);
  const Tensor a_in = kernel_rows(a, bf16_a);
  Tensor bias32;
  if (bias.has_value()) bias32 = bias->to(at::kFloat).contiguous();
  cpu::DenseSparseProblem p{bf16_a ? nullptr : a_in.data_ptr<float>(),
                            bf16_a ? static_cast<const uint16_t*>(a_in.data_ptr()) : nullptr,
                            a.size(0), leading_dim(a_in), strided(w),
                            bias32.defined() ? bias32.data_ptr<float>() : nullptr,
                            ptr.data_ptr<int32_t>(), ind.data_ptr<int32_t>(), ind.numel(), block_out, block_in,
                            y.data_ptr(), dtype_of(y), y.size(1)};
  TORCH_CHECK(cpu::bsmm_dense_sparse(p, torch_parallel_for), "sparsekern cpu: out of memory for scratch buffers");
  return y;
}

Tensor bsmm_forward_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                        const Tensor& row_ptr, const Tensor& col_idx, int64_t block_out, int64_t block_in,
                        const std::optional<Tensor>& out) {
  check_forward_args(x, weight, bias, at::Device(at::kCPU), block_out, block_in);
  check_no_overlap(out, "out", {{"x", x}, {"weight", weight}, {"bias", bias.value_or(Tensor())},
                                {"row_ptr", row_ptr}, {"col_idx", col_idx}});
  check_cpu_dtype(weight, "weight");
  check_compressed(row_ptr, "row_ptr", col_idx, "col_idx", idx::num_blocks(weight.size(0), block_out),
                   idx::num_blocks(weight.size(1), block_in));
  return dense_sparse(x, weight, bias, row_ptr, col_idx, block_out, block_in, out);
}

Tensor bsmm_grad_input_cpu(const Tensor& grad_out, const Tensor& weight, const Tensor& col_ptr,
                           const Tensor& row_idx, int64_t block_out, int64_t block_in,
                           const std::optional<Tensor>& out) {
  check_grad_input_args(grad_out, weight, at::Device(at::kCPU), block_out, block_in);
  check_no_overlap(out, "out",
                   {{"grad_out", grad_out}, {"weight", weight}, {"col_ptr", col_ptr}, {"row_idx", row_idx}});
  check_cpu_dtype(weight, "weight");
  check_compressed(col_ptr, "col_ptr", row_idx, "row_idx", idx::num_blocks(weight.size(1), block_in),
                   idx::num_blocks(weight.size(0), block_out));
  // The forward kernel on W.T: its block rows are W's block columns, walked by the transposed index.
  return dense_sparse(grad_out, weight.t(), std::nullopt, col_ptr, row_idx, block_in, block_out, out);
}

Tensor bsmm_grad_weight_cpu(const Tensor& grad_out, const Tensor& x, const Tensor& block_row,
                            const Tensor& col_idx, int64_t block_out, int64_t block_in,
                            const std::optional<Tensor>& out) {
  check_grad_weight_args(grad_out, x, block_row, col_idx, at::Device(at::kCPU), block_out, block_in);
  check_no_overlap(out, "out",
                   {{"grad_out", grad_out}, {"x", x}, {"block_row", block_row}, {"col_idx", col_idx}});
  check_cpu_dtype(x, "x");
  const int64_t n = grad_out.size(1), k = x.size(1);
  const int err = idx::check_coordinates(block_row.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(),
                                         col_idx.numel(), idx::num_blocks(n, block_out),
                                         idx::num_blocks(k, block_in));
  TORCH_CHECK(err == idx::kIndexOk, "invalid block index (block_row, col_idx): ", idx::describe(err));
  // The one [out, in] tensor; the kernels write all of it (zeros off the layout).
  Tensor dw = output(out, {n, k}, x);
  // (The argument checks made grad_out's and x's dtypes equal.)
  const bool bf16_in = x.scalar_type() == at::kBFloat16 && cpu::sampled_takes_bf16();
  const Tensor dy_in = kernel_rows(grad_out, bf16_in), x_in = kernel_rows(x, bf16_in);
  auto as_bf16 = [&](const Tensor& t) { return bf16_in ? static_cast<const uint16_t*>(t.data_ptr()) : nullptr; };
  auto as_fp32 = [&](const Tensor& t) { return bf16_in ? nullptr : t.data_ptr<float>(); };
  cpu::SampledProblem p{as_fp32(dy_in), as_bf16(dy_in), leading_dim(dy_in), as_fp32(x_in), as_bf16(x_in),
                        leading_dim(x_in), x.size(0), n, k, block_row.data_ptr<int32_t>(),
                        col_idx.data_ptr<int32_t>(), col_idx.numel(), block_out, block_in, dw.data_ptr(),
                        dtype_of(dw), k};
  TORCH_CHECK(cpu::bsmm_sampled(p, torch_parallel_for), "sparsekern cpu: out of memory for scratch buffers");
  return dw;
}

// ===================================================== CPU element-sparse products

// A CSR index over n_outer rows with columns in [0, n_inner), checked in O(nnz): pointers int32
// or int64 (returned as int64, the kernels' type), indices int32.
Tensor checked_csr(const Tensor& ptr, const char* ptr_name, const Tensor& ind, const char* ind_name,
                   int64_t n_outer, int64_t n_inner) {
  TORCH_CHECK(ptr.scalar_type() == at::kInt || ptr.scalar_type() == at::kLong, ptr_name,
              " must be int32 or int64, got ", ptr.scalar_type());
  TORCH_CHECK(ptr.dim() == 1 && ptr.is_contiguous() && ptr.is_cpu(), ptr_name, " must be a contiguous 1-D CPU tensor");
  TORCH_CHECK(ptr.numel() == n_outer + 1, ptr_name, " must have ", n_outer + 1, " entries (rows + 1), got ",
              ptr.numel());
  check_index_tensor(ind, ind_name, at::Device(at::kCPU));
  const int err = ptr.scalar_type() == at::kInt
                      ? idx::check_compressed(ptr.data_ptr<int32_t>(), n_outer, ind.data_ptr<int32_t>(), ind.numel(), n_inner)
                      : idx::check_compressed(ptr.data_ptr<int64_t>(), n_outer, ind.data_ptr<int32_t>(), ind.numel(), n_inner);
  TORCH_CHECK(err == idx::kIndexOk, "invalid element index (", ptr_name, ", ", ind_name, "): ", idx::describe(err));
  return ptr.to(at::kLong);
}

// The kernels compute in fp32; a bf16 call gets its result rounded once, into `out` if given.
Tensor finish(const Tensor& y32, const Tensor& like, const std::optional<Tensor>& out) {
  if (like.scalar_type() == at::kFloat) return y32;
  Tensor y = output(out, y32.sizes(), like);
  y.copy_(y32);
  return y;
}

std::optional<Tensor> fp32_out(const std::optional<Tensor>& out, const Tensor& like) {
  return like.scalar_type() == at::kFloat ? out : std::nullopt;
}

Tensor element_dense_sparse(const Tensor& a, const Tensor& w, const std::optional<Tensor>& bias, const Tensor& ptr64,
                            const Tensor& ind, const std::optional<Tensor>& out) {
  const Tensor a32 = rows_fp32(a);
  Tensor y32 = output(fp32_out(out, a), {a.size(0), w.size(0)}, a32);
  Tensor bias32;
  if (bias.has_value()) bias32 = bias->to(at::kFloat).contiguous();
  cpu::ElementDenseSparse p{a32.data_ptr<float>(), a.size(0), leading_dim(a32), strided(w),
                            bias32.defined() ? bias32.data_ptr<float>() : nullptr, ptr64.data_ptr<int64_t>(),
                            ind.data_ptr<int32_t>(), ind.numel(), y32.data_ptr<float>(), y32.size(1),
                            at::in_parallel_region() ? 1 : at::get_num_threads()};
  TORCH_CHECK(cpu::esmm_dense_sparse(p, torch_parallel_for), "sparsekern cpu: out of memory for scratch buffers");
  return finish(y32, a, out);
}

Tensor esmm_forward_cpu(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                        const Tensor& row_ptr, const Tensor& col_idx, const std::optional<Tensor>& out) {
  check_linear_forward(x, weight, bias, at::Device(at::kCPU));
  check_no_overlap(out, "out", {{"x", x}, {"weight", weight}, {"bias", bias.value_or(Tensor())},
                                {"row_ptr", row_ptr}, {"col_idx", col_idx}});
  check_cpu_dtype(weight, "weight");
  const Tensor ptr = checked_csr(row_ptr, "row_ptr", col_idx, "col_idx", weight.size(0), weight.size(1));
  return element_dense_sparse(x, weight, bias, ptr, col_idx, out);
}

Tensor esmm_grad_input_cpu(const Tensor& grad_out, const Tensor& weight, const Tensor& col_ptr,
                           const Tensor& row_idx, const std::optional<Tensor>& out) {
  check_linear_grad_input(grad_out, weight, at::Device(at::kCPU));
  check_no_overlap(out, "out",
                   {{"grad_out", grad_out}, {"weight", weight}, {"col_ptr", col_ptr}, {"row_idx", row_idx}});
  check_cpu_dtype(weight, "weight");
  const Tensor ptr = checked_csr(col_ptr, "col_ptr", row_idx, "row_idx", weight.size(1), weight.size(0));
  // The forward kernel on W.T: its rows are W's columns, walked by the transposed index.
  return element_dense_sparse(grad_out, weight.t(), std::nullopt, ptr, row_idx, out);
}

Tensor esmm_grad_weight_cpu(const Tensor& grad_out, const Tensor& x, const Tensor& row_ptr, const Tensor& col_idx,
                            const std::optional<Tensor>& out) {
  check_linear_grad_weight(grad_out, x, at::Device(at::kCPU));
  check_no_overlap(out, "out", {{"grad_out", grad_out}, {"x", x}, {"row_ptr", row_ptr}, {"col_idx", col_idx}});
  check_cpu_dtype(x, "x");
  const int64_t n = grad_out.size(1), k = x.size(1);
  const Tensor ptr = checked_csr(row_ptr, "row_ptr", col_idx, "col_idx", n, k);
  const Tensor dy32 = rows_fp32(grad_out), x32 = rows_fp32(x);
  Tensor dw32 = output(fp32_out(out, x), {n, k}, x32);
  cpu::ElementSampled p{dy32.data_ptr<float>(), leading_dim(dy32), x32.data_ptr<float>(), leading_dim(x32),
                        x.size(0), n, k, ptr.data_ptr<int64_t>(), col_idx.data_ptr<int32_t>(), col_idx.numel(),
                        dw32.data_ptr<float>(), k};
  TORCH_CHECK(cpu::esmm_sampled(p, torch_parallel_for), "sparsekern cpu: out of memory for scratch buffers");
  return finish(dw32, x, out);
}

// A dense fp32 CPU matrix the activation-sparse weight gradient reads: rows contiguous.
void check_dense_operand(const Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D, got ", t.dim(), " dimensions");
  TORCH_CHECK_TYPE(t.is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor, got ",
                   t.scalar_type(), " on ", t.device());
  TORCH_CHECK_VALUE(t.size(1) <= 1 || t.stride(1) == 1, name, " must have contiguous rows (stride(1) == 1)");
  TORCH_CHECK_VALUE(t.size(0) < (int64_t{1} << 31), name, " has too many rows for int32 row indices");
}

std::tuple<int64_t, bool> operand_stats_cpu(const Tensor& t, int64_t row_step) {
  check_dense_operand(t, "t");
  TORCH_CHECK_VALUE(row_step >= 1, "row_step must be at least 1, got ", row_step);
  const cpu::OperandStats s = cpu::operand_stats(t.data_ptr<float>(), t.size(0), t.size(1), leading_dim(t),
                                                 row_step, torch_parallel_for);
  return {s.nnz, s.finite};
}

// The status of a product with a sparse operand; false when its dense side was not finite (the
// caller then runs the dense product).
bool sparse_operand_done(cpu::SparseOperandStatus status) {
  TORCH_CHECK(status != cpu::SparseOperandStatus::kNoMemory, "sparsekern cpu: out of memory for scratch buffers");
  return status == cpu::SparseOperandStatus::kOk;
}

Tensor esmm_sparse_operand_grad_weight_cpu(const Tensor& grad_out, const Tensor& x, bool sparse_input,
                                           const std::optional<Tensor>& out, int64_t chunk_rows, int64_t s_block,
                                           bool dense_if_not_finite) {
  check_dense_operand(grad_out, "grad_out");
  check_dense_operand(x, "x");
  TORCH_CHECK_VALUE(grad_out.size(0) == x.size(0), "grad_out and x must have the same rows, got ", grad_out.size(0),
                    " and ", x.size(0));
  TORCH_CHECK_VALUE(chunk_rows >= 0 && chunk_rows <= 4096, "chunk_rows must be in [0, 4096] (0: chosen), got ",
                    chunk_rows);
  TORCH_CHECK_VALUE(s_block >= 0 && s_block <= 65536, "s_block must be in [0, 65536] (0: chosen), got ",
                    s_block);
  const int64_t m = x.size(0), n = grad_out.size(1), k = x.size(1);
  check_no_overlap(out, "out", {{"grad_out", grad_out}, {"x", x}});
  Tensor dw = output(out, {n, k}, x);
  cpu::SparseOperandGradWeight p{grad_out.data_ptr<float>(), leading_dim(grad_out), x.data_ptr<float>(),
                                 leading_dim(x), m, n, k, sparse_input, dw.data_ptr<float>(),
                                 at::in_parallel_region() ? 1 : at::get_num_threads(), chunk_rows, s_block,
                                 dense_if_not_finite};
  if (!sparse_operand_done(cpu::esmm_sparse_operand_grad_weight(p, torch_parallel_for)))
    at::mm_out(dw, grad_out.t(), x);  // an Inf or NaN on the dense side: the dense product's NaNs
  return dw;
}

Tensor esmm_sparse_operand_matmul_cpu(const Tensor& a, const Tensor& b, bool b_transposed,
                                      const std::optional<Tensor>& out, int64_t chunk_rows, int64_t s_block,
                                      bool dense_if_not_finite) {
  check_dense_operand(a, "a");
  check_dense_operand(b, "b");
  const int64_t r_dim = a.size(1), b_rows = b_transposed ? b.size(1) : b.size(0);
  TORCH_CHECK_VALUE(b_rows == r_dim, "a's columns and b", b_transposed ? "'s columns" : "'s rows",
                    " must match (a @ b", b_transposed ? ".T" : "", "), got ", r_dim, " and ", b_rows);
  TORCH_CHECK_VALUE(chunk_rows >= 0 && chunk_rows <= 4096, "chunk_rows must be in [0, 4096] (0: chosen), got ",
                    chunk_rows);
  TORCH_CHECK_VALUE(s_block >= 0 && s_block <= 65536, "s_block must be in [0, 65536] (0: chosen), got ",
                    s_block);
  const int64_t t_dim = a.size(0), d_dim = b_transposed ? b.size(0) : b.size(1);
  check_no_overlap(out, "out", {{"a", a}, {"b", b}});
  Tensor result = output(out, {t_dim, d_dim}, a);
  cpu::SparseOperandMatmul p{a.data_ptr<float>(), leading_dim(a), b.data_ptr<float>(), leading_dim(b), t_dim, r_dim,
                             d_dim, b_transposed, result.data_ptr<float>(),
                             at::in_parallel_region() ? 1 : at::get_num_threads(), chunk_rows, s_block,
                             dense_if_not_finite};
  if (!sparse_operand_done(cpu::esmm_sparse_operand_matmul(p, torch_parallel_for)))
    at::mm_out(result, a, b_transposed ? b.t() : b);  // an Inf or NaN in b: the dense product's NaNs
  return result;
}

// where(mask, t, 0) bit for bit, in one pass (cpu/zero_outside.h): the dense format's masking.
Tensor zero_outside_cpu(const Tensor& t, const Tensor& mask) {
  TORCH_CHECK_VALUE(t.is_cpu() && mask.is_cpu(), "t and mask must be CPU tensors, got ", t.device(), " and ",
                    mask.device());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "mask must be a bool tensor, got ", mask.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == mask.sizes(), "mask must have t's shape ", t.sizes(), ", got ", mask.sizes());
  TORCH_CHECK_VALUE(t.is_contiguous() && mask.is_contiguous(), "t and mask must be contiguous");
  const int64_t word = t.element_size();
  TORCH_CHECK_TYPE(!t.is_complex() && (word == 1 || word == 2 || word == 4 || word == 8),
                   "t must have real entries of 1, 2, 4 or 8 bytes, got ", t.scalar_type());
  Tensor out = output(std::nullopt, t.sizes(), t);  // huge pages from 4 MB: no page fault per 4 KiB
  const auto* keep = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  at::parallel_for(0, t.numel(), int64_t{1} << 16, [&](int64_t begin, int64_t end) {
    cpu::zero_outside(t.data_ptr(), keep, out.data_ptr(), begin, end, word);
  });
  return out;
}

void register_cpu_element(pybind11::module_& m) {
  m.def("zero_outside_cpu", &zero_outside_cpu,
        "torch.where(mask, t, 0) bit for bit, one pass (CPU; contiguous t and bool mask of its shape)",
        pybind11::arg("t"), pybind11::arg("mask"));
  m.def("operand_stats_cpu", &operand_stats_cpu,
        "(nonzeros, all finite) of rows 0, row_step, 2 row_step, ... of a 2-D float32 CPU tensor", pybind11::arg("t"),
        pybind11::arg("row_step") = 1);
  m.def("esmm_sparse_operand_grad_weight_cpu", &esmm_sparse_operand_grad_weight_cpu,
        "dW = grad_out.T @ x walking the nonzeros of x (sparse_input) or of grad_out (CPU); dense_if_not_finite: "
        "the dense product instead when the other side holds an Inf or NaN",
        pybind11::arg("grad_out"), pybind11::arg("x"), pybind11::arg("sparse_input"),
        pybind11::arg("out") = pybind11::none(), pybind11::arg("chunk_rows") = 0, pybind11::arg("s_block") = 0,
        pybind11::arg("dense_if_not_finite") = false);
  m.def("esmm_sparse_operand_matmul_cpu", &esmm_sparse_operand_matmul_cpu,
        "a @ b (a @ b.T when b_transposed) walking the nonzeros of a (CPU); dense_if_not_finite: the dense product "
        "instead when b holds an Inf or NaN",
        pybind11::arg("a"), pybind11::arg("b"), pybind11::arg("b_transposed"), pybind11::arg("out") = pybind11::none(),
        pybind11::arg("chunk_rows") = 0, pybind11::arg("s_block") = 0, pybind11::arg("dense_if_not_finite") = false);
  m.def("esmm_forward_cpu", &esmm_forward_cpu, "y = x @ W.T + bias over W's listed nonzeros (CPU)",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("row_ptr"),
        pybind11::arg("col_idx"), pybind11::arg("out") = pybind11::none());
  m.def("esmm_grad_input_cpu", &esmm_grad_input_cpu, "dx = grad_out @ W over W's listed nonzeros (CPU)",
        pybind11::arg("grad_out"), pybind11::arg("weight"), pybind11::arg("col_ptr"), pybind11::arg("row_idx"),
        pybind11::arg("out") = pybind11::none());
  m.def("esmm_grad_weight_cpu", &esmm_grad_weight_cpu,
        "dW = grad_out.T @ x at W's listed nonzeros, zeros elsewhere (CPU)", pybind11::arg("grad_out"),
        pybind11::arg("x"), pybind11::arg("row_ptr"), pybind11::arg("col_idx"), pybind11::arg("out") = pybind11::none());
}

// The checks every AbsTopK entry point makes of x and k; x's dtype as the kernels name it.
cpu::AbsTopkDtype checked_abs_topk_args(const Tensor& x, int64_t k) {
  TORCH_CHECK_VALUE(x.layout() == at::kStrided && x.device().is_cpu(), "x must be a dense CPU tensor, got ",
                    x.layout(), " on ", x.device());
  cpu::AbsTopkDtype dtype = cpu::kAbsTopkF32;
  switch (x.scalar_type()) {
    case at::kFloat: dtype = cpu::kAbsTopkF32; break;
    case at::kDouble: dtype = cpu::kAbsTopkF64; break;
    case at::kHalf: dtype = cpu::kAbsTopkF16; break;
    case at::kBFloat16: dtype = cpu::kAbsTopkBF16; break;
    default:
      TORCH_CHECK_TYPE(false, "x must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  }
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [rows, n], got ", x.dim(), "-D");
  TORCH_CHECK_VALUE(x.is_contiguous(), "x must be contiguous");
  TORCH_CHECK_VALUE(x.size(1) <= INT32_MAX, "x's rows must be shorter than 2^31, got ", x.size(1));
  TORCH_CHECK_VALUE(k >= 0 && k <= x.size(1), "k must be in [0, ", x.size(1), "], got ", k);
  return dtype;
}

std::tuple<Tensor, Tensor> abs_topk_outputs(const Tensor& x, const std::optional<Tensor>& values_out,
                                            const std::optional<Tensor>& kept_out) {
  Tensor values = output(values_out, x.sizes(), x);
  Tensor kept = output(kept_out, x.sizes(), at::empty({0}, x.options().dtype(at::kBool)));
  check_no_overlap(values, "values_out", {{"x", x}, {"kept_out", kept}});
  check_no_overlap(kept, "kept_out", {{"x", x}});
  return {values, kept};
}

void check_abs_topk_status(cpu::AbsTopkStatus status, const char* name) {
  TORCH_CHECK(status != cpu::kAbsTopkOutOfMemory, "sparsekern cpu: out of memory for scratch buffers");
  TORCH_CHECK(status == cpu::kAbsTopkOk, name, ": invalid arguments");
}

void check_gelu_approximate(const std::string& approximate) {
  TORCH_CHECK_VALUE(approximate == "none" || approximate == "tanh", "approximate must be 'none' or 'tanh', got '",
                    approximate, "'");
}

// Rows of x a fused pass takes at a time: about 256 KiB of them, so that what its first step
// writes is still in L2 when the second reads it (half of the EPYC's 512 KiB), and few enough
// chunks that the per-call cost of torch's kernel stays small (at 64 KiB, on [2048, 8192] fp32,
// it made the pass 1.4x slower).
int64_t fused_rows(const Tensor& x) {
  return std::max<int64_t>(1, (int64_t{256} << 10) / std::max<int64_t>(1, x.size(1) * x.element_size()));
}

// AbsTopK activation (csrc/cpu/abs_topk.h): in every row of x, the k entries of largest
// magnitude (NaN largest, ties to the lowest index) as (values, kept mask), both x-shaped;
// sparsekern/activation/backends/cpu.py calls it. values_out / kept_out: outputs the caller
// supplies (the tests' poisoned ones).
void register_cpu_activation(pybind11::module_& m) {
  m.def(
      "abs_topk_cpu",
      [](const Tensor& x, int64_t k, const std::optional<Tensor>& values_out,
         const std::optional<Tensor>& kept_out) {
        const cpu::AbsTopkDtype dtype = checked_abs_topk_args(x, k);
        auto [values, kept] = abs_topk_outputs(x, values_out, kept_out);
        check_abs_topk_status(cpu::abs_topk(x.data_ptr(), dtype, x.size(0), x.size(1), k, values.data_ptr(),
                                            reinterpret_cast<uint8_t*>(kept.data_ptr<bool>()), torch_parallel_for),
                              "abs_topk_cpu");
        return std::make_tuple(values, kept);
      },
      "(values, kept): the k largest-magnitude entries of every row of a 2-D CPU tensor, zeros elsewhere",
      pybind11::arg("x"), pybind11::arg("k"), pybind11::arg("values_out") = pybind11::none(),
      pybind11::arg("kept_out") = pybind11::none());
  // The backward, grad where kept and +0 elsewhere, into an output on huge pages: torch.where
  // allocates a fresh buffer whose page faults cost more than the pass itself (70 ms against
  // about 10 for [2048, 8192] fp32 on the EPYC).
  m.def(
      "abs_topk_backward_cpu",
      [](const Tensor& grad, const Tensor& kept) {
        TORCH_CHECK_VALUE(grad.device().is_cpu() && kept.device().is_cpu(), "grad and kept must be CPU tensors");
        TORCH_CHECK_TYPE(kept.scalar_type() == at::kBool, "kept must be bool, got ", kept.scalar_type());
        TORCH_CHECK_VALUE(grad.sizes() == kept.sizes(), "grad and kept must have one shape, got ", grad.sizes(),
                          " and ", kept.sizes());
        TORCH_CHECK_VALUE(grad.is_contiguous() && kept.is_contiguous(), "grad and kept must be contiguous");
        const int64_t size = grad.element_size();
        TORCH_CHECK_TYPE(grad.is_floating_point() && (size == 2 || size == 4 || size == 8),
                         "grad must be a floating tensor, got ", grad.scalar_type());
        Tensor dx = output(std::nullopt, grad.sizes(), grad);
        const auto* keep = reinterpret_cast<const uint8_t*>(kept.data_ptr<bool>());
        at::parallel_for(0, grad.numel(), int64_t{1} << 16, [&](int64_t begin, int64_t end) {
          cpu::zero_outside(grad.data_ptr(), keep, dx.data_ptr(), begin, end, grad.element_size());
        });
        return dx;
      },
      "grad where kept, +0 elsewhere (the backward of abs_topk_cpu)", pybind11::arg("grad"), pybind11::arg("kept"));
  // GELU then AbsTopK, a chunk of rows at a time: torch's own GELU (at::gelu_out, so the values
  // are F.gelu's, bit for bit but in fp64's last bit) into a per-task buffer that stays in L2,
  // then the select from it.
  // The GELU's output never reaches memory, and no fresh x-sized buffer pays its page faults.
  m.def(
      "gelu_abs_topk_cpu",
      [](const Tensor& x, int64_t k, const std::string& approximate, const std::optional<Tensor>& values_out,
         const std::optional<Tensor>& kept_out) {
        const cpu::AbsTopkDtype dtype = checked_abs_topk_args(x, k);
        check_gelu_approximate(approximate);
        auto [values, kept] = abs_topk_outputs(x, values_out, kept_out);
        const int64_t rows = x.size(0), n = x.size(1), chunk = fused_rows(x);
        const int64_t row_bytes = n * x.element_size();
        auto* value_bytes = static_cast<char*>(values.data_ptr());
        auto* kept_bytes = reinterpret_cast<uint8_t*>(kept.data_ptr<bool>());
        std::atomic<int> status{cpu::kAbsTopkOk};
        // Detached: torch's threads do not inherit the caller's dispatch state, so the autograd
        // of gelu_out would see an input that requires grad there.
        const Tensor input = x.detach();
        at::parallel_for(0, (rows + chunk - 1) / chunk, 1, [&](int64_t begin, int64_t end) {
          Tensor activated = at::empty({chunk, n}, x.options());
          for (int64_t c = begin; c < end && status.load() == cpu::kAbsTopkOk; ++c) {
            const int64_t first = c * chunk, count = std::min(chunk, rows - first);
            Tensor part = activated.narrow(0, 0, count);
            at::gelu_out(part, input.narrow(0, first, count), approximate);
            const cpu::AbsTopkStatus s = cpu::abs_topk(part.data_ptr(), dtype, count, n, k,
                                                       value_bytes + first * row_bytes, kept_bytes + first * n, nullptr);
            if (s != cpu::kAbsTopkOk) status.store(s);
          }
        });
        check_abs_topk_status(static_cast<cpu::AbsTopkStatus>(status.load()), "gelu_abs_topk_cpu");
        return std::make_tuple(values, kept);
      },
      "(values, kept) of abs_topk(gelu(x), k) in one pass over x (CPU)", pybind11::arg("x"), pybind11::arg("k"),
      pybind11::arg("approximate") = "none", pybind11::arg("values_out") = pybind11::none(),
      pybind11::arg("kept_out") = pybind11::none());
  // Its backward, where(kept, gelu_backward(grad, x), 0): a chunk of rows at a time, the kept
  // entries of grad and x packed, the GELU's derivative by torch's own kernel on those only (a
  // quarter, after AbsTopK: [1024, 2048] fp32, one thread of the Zen 4, 5.7-6.6 ms against 8.8 over
  // every entry then the masked copy), then expanded into the output with zeros elsewhere.
  m.def(
      "gelu_abs_topk_backward_cpu",
      [](const Tensor& grad, const Tensor& x, const Tensor& kept, const std::string& approximate) {
        checked_abs_topk_args(x, 0);
        check_gelu_approximate(approximate);
        TORCH_CHECK_VALUE(grad.device().is_cpu() && kept.device().is_cpu(), "grad and kept must be CPU tensors");
        TORCH_CHECK_TYPE(kept.scalar_type() == at::kBool, "kept must be bool, got ", kept.scalar_type());
        TORCH_CHECK_TYPE(grad.scalar_type() == x.scalar_type(), "grad must have x's dtype ", x.scalar_type(), ", got ",
                         grad.scalar_type());
        TORCH_CHECK_VALUE(grad.sizes() == x.sizes() && kept.sizes() == x.sizes(), "grad, x and kept must have one "
                          "shape, got ", grad.sizes(), ", ", x.sizes(), " and ", kept.sizes());
        TORCH_CHECK_VALUE(grad.is_contiguous() && kept.is_contiguous(), "grad and kept must be contiguous");
        Tensor dx = output(std::nullopt, x.sizes(), x);
        const int64_t rows = x.size(0), n = x.size(1), chunk = fused_rows(x);
        const auto* keep = reinterpret_cast<const uint8_t*>(kept.data_ptr<bool>());
        auto* dx_bytes = static_cast<char*>(dx.data_ptr());
        const int64_t row_bytes = n * x.element_size();
        const Tensor input = x.detach(), grad_in = grad.detach();  // as in the forward
        const int64_t word = x.element_size();
        const char* grad_bytes = static_cast<const char*>(grad_in.data_ptr());
        const char* x_bytes = static_cast<const char*>(input.data_ptr());
        at::parallel_for(0, (rows + chunk - 1) / chunk, 1, [&](int64_t begin, int64_t end) {
          Tensor packed = at::empty({3, chunk * n}, x.options());  // grad, x, derivative
          for (int64_t c = begin; c < end; ++c) {
            const int64_t first = c * chunk, count = std::min(chunk, rows - first);
            const uint8_t* kept_part = keep + first * n;
            const int64_t kept_count = cpu::pack_kept(grad_bytes + first * row_bytes, kept_part,
                                                      packed[0].data_ptr(), 0, count * n, word);
            cpu::pack_kept(x_bytes + first * row_bytes, kept_part, packed[1].data_ptr(), 0, count * n, word);
            Tensor derivative = packed[2].narrow(0, 0, kept_count);
            at::gelu_backward_out(derivative, packed[0].narrow(0, 0, kept_count), packed[1].narrow(0, 0, kept_count),
                                  approximate);
            cpu::expand_kept(derivative.data_ptr(), kept_part, dx_bytes + first * row_bytes, 0, count * n, word);
          }
        });
        return dx;
      },
      "where(kept, gelu_backward(grad, x), 0): the backward of gelu_abs_topk_cpu", pybind11::arg("grad"),
      pybind11::arg("x"), pybind11::arg("kept"), pybind11::arg("approximate") = "none");
}

cpu::Isa parse_isa(const std::string& name) {
  cpu::Isa isa = cpu::Isa::kPortable;
  TORCH_CHECK_VALUE(cpu::isa_from_name(name.c_str(), &isa),
                    "isa must be one of 'portable', 'avx2', 'avx512', 'amx', got '", name, "'");
  return isa;
}

void register_cpu(pybind11::module_& m) {
  m.def("bsmm_forward_cpu", &bsmm_forward_cpu, "y = x @ W.T + bias over active blocks (CPU)", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("row_ptr"), pybind11::arg("col_idx"),
        pybind11::arg("block_out"), pybind11::arg("block_in"), pybind11::arg("out") = pybind11::none());
  m.def("bsmm_grad_input_cpu", &bsmm_grad_input_cpu, "dx = grad_out @ W over active blocks (CPU)",
        pybind11::arg("grad_out"), pybind11::arg("weight"), pybind11::arg("col_ptr"), pybind11::arg("row_idx"),
        pybind11::arg("block_out"), pybind11::arg("block_in"), pybind11::arg("out") = pybind11::none());
  m.def("bsmm_grad_weight_cpu", &bsmm_grad_weight_cpu, "dW = grad_out.T @ x on active blocks, zeros elsewhere (CPU)",
        pybind11::arg("grad_out"), pybind11::arg("x"), pybind11::arg("block_row"), pybind11::arg("col_idx"),
        pybind11::arg("block_out"), pybind11::arg("block_in"), pybind11::arg("out") = pybind11::none());
  m.def("cpu_isa", [] { return std::string(cpu::isa_name(cpu::active_isa())); },
        "The instruction set the CPU kernels use now: 'portable', 'avx2', 'avx512' or 'amx'.");
  m.def("cpu_bf16_on_tiles", &cpu::dense_sparse_takes_bf16,
        "Whether a bf16 forward (or input gradient) with n_in input columns and this block runs on "
        "the AMX tiles now.",
        pybind11::arg("n_in"), pybind11::arg("block_out"), pybind11::arg("block_in"));
  m.def("cpu_best_isa", [] { return std::string(cpu::isa_name(cpu::best_isa())); },
        "The best instruction set this CPU supports.");
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        const std::string previous = cpu::isa_name(cpu::active_isa());
        const cpu::Isa isa = parse_isa(name);
        TORCH_CHECK_VALUE(cpu::set_active_isa(isa), "this CPU does not support isa '", name, "' (best: '",
                          cpu::isa_name(cpu::best_isa()), "')");
        return previous;
      },
      "Use the kernels compiled for `name` (never one this CPU lacks); returns the previous one.",
      pybind11::arg("name"));
}

// ===================================================== top-k projection (CPU)
// csrc/cpu/topk.h: a read-only select that returns a plan (an int64 tensor), then one
// write pass applying it; sparsekern/projection/backends.py ("cpu") calls both.

cpu::TopkDtype topk_dtype(const Tensor& weight) {
  switch (weight.scalar_type()) {
    case at::kFloat:
      return cpu::kTopkF32;
    case at::kHalf:
      return cpu::kTopkF16;
    case at::kBFloat16:
      return cpu::kTopkBF16;
    default:
      TORCH_CHECK_TYPE(false, "weight must be float32, float16 or bfloat16 for the cpu projection, got ",
                       weight.scalar_type());
  }
  return cpu::kTopkF32;  // unreachable
}

// The kernels walk row-major memory: contiguous CPU tensors only; forced is weight-shaped bool.
const uint8_t* check_topk_args(const Tensor& weight, const std::optional<Tensor>& forced) {
  const at::Device dev(at::kCPU);
  check_matrix(weight, "weight", dev);
  topk_dtype(weight);
  TORCH_CHECK_VALUE(weight.numel() > 0, "weight must not be empty");
  TORCH_CHECK_VALUE(weight.is_contiguous(), "weight must be contiguous");
  return forced_mask(forced, weight);
}

Tensor topk_select_cpu(const Tensor& weight, const std::optional<Tensor>& forced, int64_t k) {
  const uint8_t* mask = check_topk_args(weight, forced);
  TORCH_CHECK_VALUE(k >= 0 && k <= weight.numel(), "k must be in [0, ", weight.numel(), "], got ", k);
  Tensor plan = at::empty({cpu::kTopkPlanLength + kStampLength}, weight.options().dtype(at::kLong));
  const cpu::TopkStatus status = cpu::topk_select(weight.data_ptr(), topk_dtype(weight), weight.size(0),
                                                  weight.size(1), mask, k, torch_parallel_for,
                                                  plan.data_ptr<int64_t>());
  TORCH_CHECK_VALUE(status != cpu::kTopkNonFinite, "weight must be finite, but it holds NaN or Inf");
  TORCH_CHECK(status == cpu::kTopkOk, "topk_select_cpu: invalid arguments");
  const PlanStamp stamp = plan_stamp(weight, forced);
  std::copy(stamp.begin(), stamp.end(), plan.data_ptr<int64_t>() + cpu::kTopkPlanLength);
  return plan;
}

// (row_ptr, col_idx, col_ptr, row_idx) of what topk_apply kept: int64 pointers, int32 indices.
using KeptTensors = std::tuple<Tensor, Tensor, Tensor, Tensor>;

template <class T>
Tensor vector_tensor(const std::vector<T>& v, at::ScalarType dtype) {
  Tensor t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(dtype));
  std::copy(v.begin(), v.end(), t.data_ptr<T>());
  return t;
}

std::tuple<int64_t, std::optional<Tensor>, std::optional<KeptTensors>> topk_apply_cpu(
    const Tensor& weight, const std::optional<Tensor>& forced, const Tensor& plan, int64_t block_out,
    int64_t block_in, bool with_index) {
  const uint8_t* mask = check_topk_args(weight, forced);
  TORCH_CHECK_VALUE(plan.scalar_type() == at::kLong && plan.dim() == 1 &&
                        plan.numel() == cpu::kTopkPlanLength + kStampLength && plan.device().is_cpu() &&
                        plan.is_contiguous(),
                    "plan must be the int64 tensor topk_select_cpu returned");
  check_no_overlap(weight, "weight", {{"plan", plan}});
  check_plan_stamp(plan.data_ptr<int64_t>() + cpu::kTopkPlanLength, weight, forced, "topk_select_cpu");
  TORCH_CHECK_VALUE((block_out == 0 && block_in == 0) || (block_out > 0 && block_in > 0),
                    "block_out and block_in must both be 0 (no block counts) or both positive, got ", block_out,
                    " and ", block_in);
  // Per-block counts are int32: a block (clipped to weight) holds fewer than 2^31 entries.
  TORCH_CHECK_VALUE(block_out == 0 || std::min(block_out, weight.size(0)) * std::min(block_in, weight.size(1)) <=
                                          INT32_MAX,
                    "blocks of ", block_out, " x ", block_in, " hold 2^31 entries or more of weight ",
                    weight.sizes(), ": too many for int32 counts");
  TORCH_CHECK_VALUE(!with_index || (weight.size(0) <= INT32_MAX && weight.size(1) <= INT32_MAX),
                    "with_index needs both sides of weight below 2^31, got ", weight.sizes());
  std::optional<Tensor> counts;
  if (block_out > 0)
    counts = at::empty({idx::num_blocks(weight.size(0), block_out), idx::num_blocks(weight.size(1), block_in)},
                       weight.options().dtype(at::kInt));
  cpu::KeptIndex index;
  // The plan's chunk count is checked by topk_apply (it must match weight's rows).
  const int64_t nnz = cpu::topk_apply(weight.data_ptr(), topk_dtype(weight), weight.size(0), weight.size(1), mask,
                                      plan.data_ptr<int64_t>(), block_out, block_in,
                                      counts ? counts->data_ptr<int32_t>() : nullptr,
                                      with_index ? &index : nullptr, torch_parallel_for);
  TORCH_CHECK_VALUE(nnz >= 0, "plan does not fit weight (was it made by topk_select_cpu for this weight?)");
  bump_version(weight);
  std::optional<KeptTensors> kept;
  if (with_index)
    kept = KeptTensors{vector_tensor(index.row_ptr, at::kLong), vector_tensor(index.col_idx, at::kInt),
                       vector_tensor(index.col_ptr, at::kLong), vector_tensor(index.row_idx, at::kInt)};
  return {nnz, counts, kept};
}

std::tuple<Tensor, int64_t, int64_t> topk_floors_cpu(const Tensor& weight, int64_t min_per_row,
                                                     int64_t min_per_col) {
  check_topk_args(weight, std::nullopt);
  TORCH_CHECK_VALUE(min_per_row >= 0 && min_per_row <= weight.size(1), "min_per_row must be in [0, ",
                    weight.size(1), "], got ", min_per_row);
  TORCH_CHECK_VALUE(min_per_col >= 0 && min_per_col <= weight.size(0), "min_per_col must be in [0, ",
                    weight.size(0), "], got ", min_per_col);
  // On huge pages when large (output()): a fresh mask's page faults cost as much as the floors.
  Tensor mask = output(std::nullopt, weight.sizes(), at::empty({0}, weight.options().dtype(at::kBool)));
  int64_t count = 0;
  uint32_t min_key = 0xffffffffu;
  const cpu::TopkStatus status = cpu::topk_floors(
      weight.data_ptr(), topk_dtype(weight), weight.size(0), weight.size(1), min_per_row, min_per_col,
      torch_parallel_for, reinterpret_cast<uint8_t*>(mask.data_ptr<bool>()), &count, &min_key);
  TORCH_CHECK_VALUE(status != cpu::kTopkNonFinite, "weight must be finite, but it holds NaN or Inf");
  TORCH_CHECK(status == cpu::kTopkOk, "topk_floors_cpu: invalid arguments");
  return {mask, count, static_cast<int64_t>(min_key)};
}

void register_projection_cpu(pybind11::module_& m) {
  m.def("topk_floors_cpu", &topk_floors_cpu,
        "Floor set of the top-k projection: (bool mask, its size, its smallest |weight| key)",
        pybind11::arg("weight"), pybind11::arg("min_per_row"), pybind11::arg("min_per_col"));
  m.def("topk_select_cpu", &topk_select_cpu,
        "Plan of the exact top-k |weight| projection (read-only; floors in `forced` kept first)",
        pybind11::arg("weight"), pybind11::arg("forced"), pybind11::arg("k"));
  m.def("topk_apply_cpu", &topk_apply_cpu,
        "Apply a topk_select_cpu plan in place: (nonzeros left, per-block nonzeros or None, "
        "(row_ptr, col_idx, col_ptr, row_idx) of the nonzeros left or None)",
        pybind11::arg("weight"), pybind11::arg("forced"), pybind11::arg("plan"), pybind11::arg("block_out"),
        pybind11::arg("block_in"), pybind11::arg("with_index") = false);
}

// ================================================================ CUDA section
// Built only when setup.py compiles csrc/cuda (torch with CUDA, nvcc found, SPARSEKERN_SKIP_CUDA
// unset): it defines SPARSEKERN_WITH_CUDA. Index *contents* are not checked here (that would
// copy them to the host and synchronize); the kernels clamp every index read and never
// touch memory outside the tensors, whatever the index holds.
#ifdef SPARSEKERN_WITH_CUDA

namespace sk_cuda = sparsekern::cuda;

sk_cuda::DType cuda_dtype(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return sk_cuda::DType::kFloat32;
    case at::kHalf:
      return sk_cuda::DType::kFloat16;
    case at::kBFloat16:
      return sk_cuda::DType::kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float32, float16 or bfloat16 for the cuda backend, got ",
                       t.scalar_type());
  }
  return sk_cuda::DType::kFloat32;  // unreachable
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "sparsekern cuda: ", what, " failed: ", cudaGetErrorString(err));
}

// The operands of a dense x sparse launch, the same fields in both formats' arguments
// (bsmm_cuda.h FwdArgs, esmm_cuda.h EsmmFwdArgs): out[M, n] = a[M, K] @ B (+ bias) with B's
// value (k, n) at b[k * sbk + n * sbn], the listed entries or blocks in `ind`.
template <class Args>
void set_dense_sparse_operands(Args& args, const Tensor& a, const Tensor& b, int64_t sbk, int64_t sbn, int64_t n,
                               const std::optional<Tensor>& bias, const Tensor& ind, const Tensor& out) {
  args.a = a.data_ptr();
  args.b = b.data_ptr();
  args.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  args.out = out.data_ptr();
  args.idx = ind.data_ptr<int32_t>();
  args.nnz = ind.numel();
  args.M = a.size(0);
  args.K = a.size(1);
  args.N = n;
  args.sam = a.stride(0);
  args.sak = a.stride(1);
  args.sbk = sbk;
  args.sbn = sbn;
  args.som = out.stride(0);
  args.son = out.stride(1);
  args.sbias = bias.has_value() ? bias->stride(0) : 0;
  args.dtype = cuda_dtype(a, "x");
}

// The operands of a sampled weight-gradient launch, the same fields in both formats' arguments
// (DwArgs, EsmmDwArgs): out[N, K] = grad_out[M, N].T @ x[M, K] at the listed entries or blocks.
template <class Args>
void set_sampled_operands(Args& args, const Tensor& grad_out, const Tensor& x, const Tensor& out, int64_t nnz,
                          sk_cuda::DType dtype) {
  args.g = grad_out.data_ptr();
  args.x = x.data_ptr();
  args.out = out.data_ptr();
  args.nnz = nnz;
  args.M = x.size(0);
  args.N = grad_out.size(1);
  args.K = x.size(1);
  args.sgm = grad_out.stride(0);
  args.sgn = grad_out.stride(1);
  args.sxm = x.stride(0);
  args.sxk = x.stride(1);
  args.swn = out.stride(0);
  args.swk = out.stride(1);
  args.dtype = dtype;
}

// out[M, N] = a[M, K] @ B (+ bias), B(k, n) = b[k * sbk + n * sbn] block-sparse (see bsmm_cuda.h).
Tensor dense_sparse_cuda(const Tensor& a, const Tensor& b_base, int64_t sbk, int64_t sbn, int64_t n,
                         const std::optional<Tensor>& bias, const Tensor& ptr, const Tensor& ind, int64_t block_k,
                         int64_t block_n, bool allow_tf32, const std::optional<Tensor>& out_arg, const char* what) {
  const c10::cuda::CUDAGuard guard(a.device());
  Tensor out = output(out_arg, {a.size(0), n}, a);  // every element is written by the kernel
  sk_cuda::FwdArgs args{};
  set_dense_sparse_operands(args, a, b_base, sbk, sbn, n, bias, ind, out);
  args.ptr = ptr.data_ptr<int32_t>();
  args.block_k = static_cast<int>(block_k);
  args.block_n = static_cast<int>(block_n);
  args.allow_tf32 = allow_tf32;
  check_launch(sk_cuda::bsmm_fwd(args, c10::cuda::getCurrentCUDAStream(a.device().index()).stream()), what);
  return out;
}

Tensor bsmm_forward_cuda(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                         const Tensor& row_ptr, const Tensor& col_idx, int64_t block_out, int64_t block_in,
                         bool allow_tf32, const std::optional<Tensor>& out) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor for the cuda backend, got ", x.device());
  const at::Device dev = x.device();
  check_forward_args(x, weight, bias, dev, block_out, block_in);
  check_no_overlap(out, "out", {{"x", x}, {"weight", weight}, {"bias", bias.value_or(Tensor())},
                                {"row_ptr", row_ptr}, {"col_idx", col_idx}});
  cuda_dtype(weight, "weight");
  check_compressed_shape(row_ptr, "row_ptr", col_idx, "col_idx", idx::num_blocks(weight.size(0), block_out), dev);
  // B = weight.T: B(k, n) = weight[n, k].
  return dense_sparse_cuda(x, weight, weight.stride(1), weight.stride(0), weight.size(0), bias, row_ptr, col_idx,
                           block_in, block_out, allow_tf32, out, "bsmm_forward_cuda");
}

Tensor bsmm_grad_input_cuda(const Tensor& grad_out, const Tensor& weight, const Tensor& col_ptr,
                            const Tensor& row_idx, int64_t block_out, int64_t block_in, bool allow_tf32,
                            const std::optional<Tensor>& out) {
  TORCH_CHECK(grad_out.is_cuda(), "grad_out must be a CUDA tensor for the cuda backend, got ", grad_out.device());
  const at::Device dev = grad_out.device();
  check_grad_input_args(grad_out, weight, dev, block_out, block_in);
  check_no_overlap(out, "out",
                   {{"grad_out", grad_out}, {"weight", weight}, {"col_ptr", col_ptr}, {"row_idx", row_idx}});
  cuda_dtype(weight, "weight");
  check_compressed_shape(col_ptr, "col_ptr", row_idx, "row_idx", idx::num_blocks(weight.size(1), block_in), dev);
  // The forward kernel again, walking the transposed index over the untransposed weight:
  // B = weight, B(k, n) = weight[k, n], blocks block_out (k) x block_in (n).
  return dense_sparse_cuda(grad_out, weight, weight.stride(0), weight.stride(1), weight.size(1), std::nullopt,
                           col_ptr, row_idx, block_out, block_in, allow_tf32, out, "bsmm_grad_input_cuda");
}

Tensor bsmm_grad_weight_cuda(const Tensor& grad_out, const Tensor& x, const Tensor& block_row,
                             const Tensor& col_idx, int64_t block_out, int64_t block_in, bool allow_tf32,
                             const std::optional<Tensor>& out) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor for the cuda backend, got ", x.device());
  const at::Device dev = x.device();
  check_grad_weight_args(grad_out, x, block_row, col_idx, dev, block_out, block_in);
  check_no_overlap(out, "out",
                   {{"grad_out", grad_out}, {"x", x}, {"block_row", block_row}, {"col_idx", col_idx}});
  const sk_cuda::DType dtype = cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(dev);
  const int64_t m = x.size(0), n = grad_out.size(1), k = x.size(1), nnz = col_idx.numel();
  Tensor dw = output(out, {n, k}, x);
  if (nnz == 0 || m == 0 || n == 0 || k == 0) return dw.zero_();
  int num_sms = 0;
  check_launch(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev.index()),
               "querying the multiprocessor count");
  const int splits = sk_cuda::bsmm_dw_splits(nnz, m, static_cast<int>(block_out), static_cast<int>(block_in), num_sms);
  // Few blocks: the batch is split over several CTAs per block, whose partial sums are added
  // atomically, in fp32.
  // Exact zeros off the layout (the kernel writes the active blocks): in dw, or in the fp32
  // scratch that is then copied over all of dw.
  Tensor target = (splits > 1 && x.scalar_type() != at::kFloat) ? at::zeros({n, k}, x.options().dtype(at::kFloat))
                                                                 : dw.zero_();
  sk_cuda::DwArgs args{};
  set_sampled_operands(args, grad_out, x, target, nnz, dtype);
  args.block_row = block_row.data_ptr<int32_t>();
  args.col_idx = col_idx.data_ptr<int32_t>();
  args.block_out = static_cast<int>(block_out);
  args.block_in = static_cast<int>(block_in);
  args.allow_tf32 = allow_tf32;
  args.splits = splits;
  check_launch(sk_cuda::bsmm_dw(args, c10::cuda::getCurrentCUDAStream(dev.index()).stream()),
               "bsmm_grad_weight_cuda");
  if (!target.is_same(dw)) dw.copy_(target);  // fp32 sums rounded once to the output dtype
  return dw;
}

void register_cuda(pybind11::module_& m) {
  m.def("bsmm_forward_cuda", &bsmm_forward_cuda, "y = x @ W.T + bias over active blocks (CUDA)", pybind11::arg("x"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("row_ptr"), pybind11::arg("col_idx"),
        pybind11::arg("block_out"), pybind11::arg("block_in"), pybind11::arg("allow_tf32") = false, pybind11::arg("out") = pybind11::none());
  m.def("bsmm_grad_input_cuda", &bsmm_grad_input_cuda, "dx = grad_out @ W over active blocks (CUDA)",
        pybind11::arg("grad_out"), pybind11::arg("weight"), pybind11::arg("col_ptr"), pybind11::arg("row_idx"),
        pybind11::arg("block_out"), pybind11::arg("block_in"), pybind11::arg("allow_tf32") = false, pybind11::arg("out") = pybind11::none());
  m.def("bsmm_grad_weight_cuda", &bsmm_grad_weight_cuda,
        "dW = grad_out.T @ x on active blocks, zeros elsewhere (CUDA)", pybind11::arg("grad_out"), pybind11::arg("x"),
        pybind11::arg("block_row"), pybind11::arg("col_idx"), pybind11::arg("block_out"), pybind11::arg("block_in"),
        pybind11::arg("allow_tf32") = false, pybind11::arg("out") = pybind11::none());
}

// ------------------------------------------------ element-sparse products (CUDA)
// csrc/cuda/esmm_cuda.h. Unlike the block section, the index *contents* are checked, by
// checked_csr on a host copy, so that an invalid index raises (the kernels would stay inside
// their buffers anyway, see esmm_cuda.h, but compute nonsense). The copy synchronizes, so a
// passed check is remembered for the index tensors it read (the same TensorImpl, kept from
// reuse by a weak reference, data pointer and version counter): a layout's index is copied
// once, not at every call. An in-place change through torch bumps the version and so is
// checked again; a write torch does not see (through `.data`, or raw memory) is not.

using WeakTensorImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct CheckedIndex {
  WeakTensorImpl ptr{c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
  WeakTensorImpl ind{c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
  const void* ptr_data = nullptr;
  const void* ind_data = nullptr;
  int64_t ptr_version = -1, ind_version = -1, n_outer = -1, n_inner = -1;

  bool matches(const Tensor& p, const Tensor& i, int64_t outer, int64_t inner) const {
    return ptr._unsafe_get_target() == p.unsafeGetTensorImpl() && ind._unsafe_get_target() == i.unsafeGetTensorImpl() &&
           ptr_data == p.data_ptr() && ind_data == i.data_ptr() && ptr_version == p._version() &&
           ind_version == i._version() && n_outer == outer && n_inner == inner;
  }
};

void check_element_index_cuda(const Tensor& ptr, const char* ptr_name, const Tensor& ind, const char* ind_name,
                              int64_t n_outer, int64_t n_inner, const at::Device& dev) {
  static std::mutex mutex;
  static std::array<CheckedIndex, 16> checked;  // the last 16 passed checks, round robin
  static size_t next = 0;
  TORCH_CHECK(ptr.device() == dev && ind.device() == dev, ptr_name, " and ", ind_name, " must be on ", dev, ", got ",
              ptr.device(), " and ", ind.device());
  TORCH_CHECK(ptr.is_contiguous() && ind.is_contiguous(), ptr_name, " and ", ind_name, " must be contiguous");
  const bool tracked = !ptr.is_inference() && !ind.is_inference();  // inference tensors have no version
  if (tracked) {
    const std::lock_guard<std::mutex> lock(mutex);
    for (const CheckedIndex& c : checked)
      if (c.matches(ptr, ind, n_outer, n_inner)) return;
  }
  checked_csr(ptr.cpu(), ptr_name, ind.cpu(), ind_name, n_outer, n_inner);  // raises if invalid
  if (!tracked) return;
  const std::lock_guard<std::mutex> lock(mutex);
  CheckedIndex& c = checked[next++ % checked.size()];
  c.ptr = WeakTensorImpl(ptr.getIntrusivePtr());
  c.ind = WeakTensorImpl(ind.getIntrusivePtr());
  c.ptr_data = ptr.data_ptr();
  c.ind_data = ind.data_ptr();
  c.ptr_version = ptr._version();
  c.ind_version = ind._version();
  c.n_outer = n_outer;
  c.n_inner = n_inner;
}

sk_cuda::PtrType ptr_type(const Tensor& ptr) {
  return ptr.scalar_type() == at::kLong ? sk_cuda::PtrType::kInt64 : sk_cuda::PtrType::kInt32;
}

// out[M, n] = a[M, K] @ B (+ bias), B(k, n) = b[n * sbn + k * sbk] over the index (see esmm_cuda.h).
Tensor element_dense_sparse_cuda(const Tensor& a, const Tensor& b, int64_t sbn, int64_t sbk, int64_t n,
                                 const std::optional<Tensor>& bias, const Tensor& ptr, const Tensor& ind,
                                 const std::optional<Tensor>& out_arg, const char* what) {
  const c10::cuda::CUDAGuard guard(a.device());
  Tensor out = output(out_arg, {a.size(0), n}, a);  // every element is written by the kernel
  Tensor packed = at::empty({ind.numel()}, a.options());  // b's values in index order; freed in stream order
  sk_cuda::EsmmFwdArgs args{};
  set_dense_sparse_operands(args, a, b, sbk, sbn, n, bias, ind, out);
  args.packed = packed.data_ptr();
  args.ptr = ptr.data_ptr();
  args.ptr_type = ptr_type(ptr);
  check_launch(sk_cuda::esmm_fwd(args, c10::cuda::getCurrentCUDAStream(a.device().index()).stream()), what);
  return out;
}

Tensor esmm_forward_cuda(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                         const Tensor& row_ptr, const Tensor& col_idx, const std::optional<Tensor>& out) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor for the cuda backend, got ", x.device());
  check_linear_forward(x, weight, bias, x.device());
  check_no_overlap(out, "out", {{"x", x}, {"weight", weight}, {"bias", bias.value_or(Tensor())},
                                {"row_ptr", row_ptr}, {"col_idx", col_idx}});
  cuda_dtype(weight, "weight");
  check_element_index_cuda(row_ptr, "row_ptr", col_idx, "col_idx", weight.size(0), weight.size(1), x.device());
  // B = weight.T: output feature n's entries are weight[n, col].
  return element_dense_sparse_cuda(x, weight, weight.stride(0), weight.stride(1), weight.size(0), bias, row_ptr,
                                   col_idx, out, "esmm_forward_cuda");
}

Tensor esmm_grad_input_cuda(const Tensor& grad_out, const Tensor& weight, const Tensor& col_ptr,
                            const Tensor& row_idx, const std::optional<Tensor>& out) {
  TORCH_CHECK(grad_out.is_cuda(), "grad_out must be a CUDA tensor for the cuda backend, got ", grad_out.device());
  check_linear_grad_input(grad_out, weight, grad_out.device());
  check_no_overlap(out, "out",
                   {{"grad_out", grad_out}, {"weight", weight}, {"col_ptr", col_ptr}, {"row_idx", row_idx}});
  cuda_dtype(weight, "weight");
  check_element_index_cuda(col_ptr, "col_ptr", row_idx, "row_idx", weight.size(1), weight.size(0), grad_out.device());
  // The forward kernels on the transposed index: input feature k's entries are weight[row, k].
  return element_dense_sparse_cuda(grad_out, weight, weight.stride(1), weight.stride(0), weight.size(1), std::nullopt,
                                   col_ptr, row_idx, out, "esmm_grad_input_cuda");
}

Tensor esmm_grad_weight_cuda(const Tensor& grad_out, const Tensor& x, const Tensor& row_ptr, const Tensor& col_idx,
                             const std::optional<Tensor>& out) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor for the cuda backend, got ", x.device());
  const at::Device dev = x.device();
  check_linear_grad_weight(grad_out, x, dev);
  check_no_overlap(out, "out", {{"grad_out", grad_out}, {"x", x}, {"row_ptr", row_ptr}, {"col_idx", col_idx}});
  const sk_cuda::DType dtype = cuda_dtype(x, "x");
  const int64_t m = x.size(0), n = grad_out.size(1), k = x.size(1), nnz = col_idx.numel();
  check_element_index_cuda(row_ptr, "row_ptr", col_idx, "col_idx", n, k, dev);
  const c10::cuda::CUDAGuard guard(dev);
  Tensor dw = output(out, {n, k}, x).zero_();  // exact zeros off the layout; the kernels write the entries
  if (nnz == 0 || m == 0) return dw;
  Tensor sums = at::zeros({nnz}, x.options().dtype(at::kFloat));  // fp32 partial sums, added atomically
  sk_cuda::EsmmDwArgs args{};
  set_sampled_operands(args, grad_out, x, dw, nnz, dtype);
  args.sums = sums.data_ptr<float>();
  args.ptr = row_ptr.data_ptr();
  args.ptr_type = ptr_type(row_ptr);
  args.idx = col_idx.data_ptr<int32_t>();
  check_launch(sk_cuda::esmm_dw(args, c10::cuda::getCurrentCUDAStream(dev.index()).stream()), "esmm_grad_weight_cuda");
  return dw;
}

void register_cuda_element(pybind11::module_& m) {
  m.def("esmm_forward_cuda", &esmm_forward_cuda, "y = x @ W.T + bias over W's listed nonzeros (CUDA)",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("row_ptr"),
        pybind11::arg("col_idx"), pybind11::arg("out") = pybind11::none());
  m.def("esmm_grad_input_cuda", &esmm_grad_input_cuda, "dx = grad_out @ W over W's listed nonzeros (CUDA)",
        pybind11::arg("grad_out"), pybind11::arg("weight"), pybind11::arg("col_ptr"), pybind11::arg("row_idx"),
        pybind11::arg("out") = pybind11::none());
  m.def("esmm_grad_weight_cuda", &esmm_grad_weight_cuda,
        "dW = grad_out.T @ x at W's listed nonzeros, zeros elsewhere (CUDA)", pybind11::arg("grad_out"),
        pybind11::arg("x"), pybind11::arg("row_ptr"), pybind11::arg("col_idx"), pybind11::arg("out") = pybind11::none());
}

// ------------------------------------------------------ top-k projection (CUDA)
// csrc/cuda/topk_cuda.h: a read-only select whose plan (state, ties_before) stays on the
// device, then one write pass; sparsekern/projection/backends.py ("cuda") calls both. The
// floor mask comes from the Python side, as for the Triton backend.

sk_cuda::TopkKeys topk_keys(const Tensor& weight) {
  return cuda_dtype(weight, "weight") == sk_cuda::DType::kFloat32 ? sk_cuda::TopkKeys::k32
                                                                  : sk_cuda::TopkKeys::k16;
}

// weight: any strides, but no two entries in one place (the write pass runs in parallel);
// forced: weight-shaped contiguous bool on weight's device.
const uint8_t* check_topk_cuda_args(const Tensor& weight, const std::optional<Tensor>& forced) {
  TORCH_CHECK(weight.is_cuda(), "weight must be a CUDA tensor for the cuda projection, got ", weight.device());
  check_matrix(weight, "weight", weight.device());
  topk_keys(weight);
  TORCH_CHECK_VALUE(weight.numel() > 0, "weight must not be empty");
  check_no_internal_overlap(weight);
  TORCH_CHECK_VALUE(sk_cuda::topk_ctas(weight.size(0), weight.size(1)) <= 0x7fffffff,
                    "weight has too many rows for the cuda projection's grid: ", weight.size(0));
  return forced_mask(forced, weight);
}

void check_plan_tensor(const Tensor& t, const char* name, int64_t numel, const Tensor& weight) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kLong && t.dim() == 1 && t.numel() == numel &&
                        t.device() == weight.device() && t.is_contiguous(),
                    name, " must be the contiguous int64 tensor of ", numel, " entries on ", weight.device(),
                    " that topk_select_cuda returned for this weight");
}

// The plans topk_select_cuda handed out and the stamp of what each was made for (PlanStamp):
// a plan's tensors live on the device, so its stamp stays here, keyed by its state tensor and
// held weakly (a dropped plan's entry goes at the next select).
struct CudaPlan {
  WeakTensorImpl state, ties;
  int64_t state_version, ties_version;
  PlanStamp stamp;
};
std::mutex cuda_plans_mutex;
std::vector<CudaPlan> cuda_plans;

void remember_cuda_plan(const Tensor& state, const Tensor& ties_before, PlanStamp stamp) {
  const std::lock_guard<std::mutex> lock(cuda_plans_mutex);
  std::erase_if(cuda_plans, [](const CudaPlan& p) { return p.state.expired(); });
  cuda_plans.push_back({WeakTensorImpl(state.getIntrusivePtr()), WeakTensorImpl(ties_before.getIntrusivePtr()),
                        version_of(state), version_of(ties_before), stamp});
}

void check_cuda_plan(const Tensor& weight, const std::optional<Tensor>& forced, const Tensor& state,
                     const Tensor& ties_before) {
  const std::lock_guard<std::mutex> lock(cuda_plans_mutex);
  for (const CudaPlan& p : cuda_plans) {
    if (p.state._unsafe_get_target() != state.unsafeGetTensorImpl()) continue;
    TORCH_CHECK_VALUE(p.ties._unsafe_get_target() == ties_before.unsafeGetTensorImpl() &&
                          p.state_version == version_of(state) && p.ties_version == version_of(ties_before),
                      "state and ties_before must be one plan from topk_select_cuda, unchanged");
    check_plan_stamp(p.stamp.data(), weight, forced, "topk_select_cuda");
    return;
  }
  TORCH_CHECK_VALUE(false, "state must be a plan's state that topk_select_cuda returned");
}

std::tuple<Tensor, Tensor> topk_select_cuda(const Tensor& weight, const std::optional<Tensor>& forced, int64_t k) {
  const uint8_t* mask = check_topk_cuda_args(weight, forced);
  TORCH_CHECK_VALUE(k >= 0 && k <= weight.numel(), "k must be in [0, ", weight.numel(), "], got ", k);
  const c10::cuda::CUDAGuard guard(weight.device());
  const auto longs = weight.options().dtype(at::kLong);
  Tensor state = at::empty({2}, longs);
  Tensor ties_before = at::empty({sk_cuda::topk_ctas(weight.size(0), weight.size(1)) + 1}, longs);
  Tensor hist = at::empty({256}, longs);  // scratch; freed in stream order
  const sk_cuda::TopkSelectArgs args{weight.data_ptr(), mask, weight.size(0), weight.size(1), weight.stride(0),
                                     weight.stride(1), topk_keys(weight), k, state.data_ptr<int64_t>(),
                                     reinterpret_cast<unsigned long long*>(hist.data_ptr<int64_t>()),
                                     ties_before.data_ptr<int64_t>()};
  check_launch(sk_cuda::topk_select(args, c10::cuda::getCurrentCUDAStream(weight.device().index()).stream()),
               "topk_select_cuda");
  remember_cuda_plan(state, ties_before, plan_stamp(weight, forced));
  return {state, ties_before};
}

std::tuple<Tensor, std::optional<Tensor>> topk_apply_cuda(const Tensor& weight, const std::optional<Tensor>& forced,
                                                          const Tensor& state, const Tensor& ties_before,
                                                          int64_t block_out, int64_t block_in) {
  const uint8_t* mask = check_topk_cuda_args(weight, forced);
  check_plan_tensor(state, "state", 2, weight);
  check_plan_tensor(ties_before, "ties_before", sk_cuda::topk_ctas(weight.size(0), weight.size(1)) + 1, weight);
  const bool per_block = block_out != 0 || block_in != 0;
  if (per_block) check_block_sides(block_out, block_in);
  check_cuda_plan(weight, forced, state, ties_before);
  const c10::cuda::CUDAGuard guard(weight.device());
  Tensor nnz = at::zeros({1}, weight.options().dtype(at::kLong));
  std::optional<Tensor> counts;
  if (per_block)
    counts = at::zeros({idx::num_blocks(weight.size(0), block_out), idx::num_blocks(weight.size(1), block_in)},
                       weight.options().dtype(at::kInt));
  const sk_cuda::TopkApplyArgs args{weight.data_ptr(), mask, weight.size(0), weight.size(1), weight.stride(0),
                                    weight.stride(1), topk_keys(weight), state.data_ptr<int64_t>(),
                                    ties_before.data_ptr<int64_t>(),
                                    reinterpret_cast<unsigned long long*>(nnz.data_ptr<int64_t>()),
                                    counts ? counts->data_ptr<int32_t>() : nullptr, static_cast<int>(block_out),
                                    static_cast<int>(block_in)};
  check_launch(sk_cuda::topk_apply(args, c10::cuda::getCurrentCUDAStream(weight.device().index()).stream()),
               "topk_apply_cuda");
  bump_version(weight);
  return {nnz, counts};
}

void register_projection_cuda(pybind11::module_& m) {
  m.def("topk_select_cuda", &topk_select_cuda,
        "Plan of the exact top-k |weight| projection on the device (read-only; floors in `forced` kept first): "
        "(state, ties_before)",
        pybind11::arg("weight"), pybind11::arg("forced"), pybind11::arg("k"));
  m.def("topk_apply_cuda", &topk_apply_cuda,
        "Apply a topk_select_cuda plan in place: (nonzeros left as a 1-element tensor, per-block nonzeros or None)",
        pybind11::arg("weight"), pybind11::arg("forced"), pybind11::arg("state"), pybind11::arg("ties_before"),
        pybind11::arg("block_out"), pybind11::arg("block_in"));
}

// ------------------------------------------------------ AbsTopK activation (CUDA)
// csrc/cuda/abs_topk_cuda.h: one CTA a row, a radix select and a write pass;
// sparsekern/activation/backends/cuda.py calls it. values_out / kept_out: outputs the caller
// supplies (the tests' poisoned ones). Everything is checked here, before any CUDA call.
void register_cuda_activation(pybind11::module_& m) {
  m.def(
      "abs_topk_cuda",
      [](const Tensor& x, int64_t k, const std::optional<Tensor>& values_out,
         const std::optional<Tensor>& kept_out) {
        TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor for the cuda backend, got ", x.device());
        TORCH_CHECK_VALUE(x.layout() == at::kStrided, "x must be a dense (strided) tensor, got ", x.layout());
        const sk_cuda::DType dtype = cuda_dtype(x, "x");
        TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D [rows, n], got ", x.dim(), "-D");
        TORCH_CHECK_VALUE(x.is_contiguous(), "x must be contiguous");
        const int64_t rows = x.size(0), n = x.size(1);
        TORCH_CHECK_VALUE(n <= INT32_MAX, "x's rows must be shorter than 2^31, got ", n);
        TORCH_CHECK_VALUE(rows <= INT32_MAX, "x must have fewer than 2^31 rows (one CTA a row), got ", rows);
        TORCH_CHECK_VALUE(k >= 0 && k <= n, "k must be in [0, ", n, "], got ", k);
        const c10::cuda::CUDAGuard guard(x.device());
        Tensor values = output(values_out, x.sizes(), x);
        Tensor kept = output(kept_out, x.sizes(), at::empty({0}, x.options().dtype(at::kBool)));
        check_no_overlap(values, "values_out", {{"x", x}, {"kept_out", kept}});
        check_no_overlap(kept, "kept_out", {{"x", x}});
        const sk_cuda::AbsTopkArgs args{x.data_ptr(), values.data_ptr(),
                                        reinterpret_cast<uint8_t*>(kept.data_ptr<bool>()), rows, n, k, dtype};
        check_launch(sk_cuda::abs_topk(args, c10::cuda::getCurrentCUDAStream(x.device().index()).stream()),
                     "abs_topk_cuda");
        return std::make_tuple(values, kept);
      },
      "(values, kept): the k largest-magnitude entries of every row of a 2-D CUDA tensor, zeros elsewhere",
      pybind11::arg("x"), pybind11::arg("k"), pybind11::arg("values_out") = pybind11::none(),
      pybind11::arg("kept_out") = pybind11::none());
}

#endif  // SPARSEKERN_WITH_CUDA

}  // namespace

// ===================================================================== module

PYBIND11_MODULE(_C, m) {
  m.doc() = "sparsekern compiled kernels";
  std::string built_with = "torch " SK_TORCH_VERSION ", CPU kernels (portable/AVX2/AVX-512, chosen at run time)";
  register_cpu(m);
  register_cpu_element(m);
  register_cpu_activation(m);
  register_projection_cpu(m);
#ifdef SPARSEKERN_WITH_CUDA
  register_cuda(m);
  register_cuda_element(m);
  register_projection_cuda(m);
  register_cuda_activation(m);
  built_with += ", CUDA kernels (CUDA runtime " + std::to_string(CUDART_VERSION) + ", archs " +
                SK_STRINGIFY(SPARSEKERN_CUDA_ARCHS) + ")";
  // The archs compiled for (e.g. "8.0/9.0a"): the cuda backend declines other GPUs, so an
  // automatic choice falls back to triton instead of failing with "no kernel image".
  m.attr("cuda_archs") = SK_STRINGIFY(SPARSEKERN_CUDA_ARCHS);
#endif
  m.attr("built_with") = built_with;
}

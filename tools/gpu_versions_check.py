"""Run by tools/gpu_versions.sh in the venv with the GPU machine's torch and triton, from the
built copy of the tree: the versions are the ones asked for, the extension (with its CUDA
kernels) imports and runs, and every Triton kernel compiles ahead of time for sm_90a without
spills, with the tensor-core instructions the tests expect. Exits non-zero on any miss."""

import sys

import torch
import triton

import sparsekern
from sparsekern import _extension
from sparsekern.triton.topk_aot import compile_kernel as compile_topk
from sparsekern.triton.topk_aot import default_cases as topk_cases
from sparsekern.triton.aot import compile_kernel, default_cases, expected_tensor_core

want_torch, want_triton, with_cuda = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
assert torch.__version__.split("+")[0] == want_torch, f"torch {torch.__version__}, not {want_torch}"
assert triton.__version__ == want_triton, f"triton {triton.__version__}, not {want_triton}"
module = _extension.extension()
assert module is not None, _extension.unavailable_reason()
assert ("cuda" in module.built_with.lower()) == with_cuda, f"CUDA kernels expected: {with_cuda}; {module.built_with}"

# The CPU kernels built against this torch compute the right thing (the binding's API in use).
gen = torch.Generator().manual_seed(0)
layout = sparsekern.BlockLayout.random((96, 128), 32, 0.5, generator=gen)
w = (torch.randn(96, 128, generator=gen) * layout.to_mask()).requires_grad_()
x = torch.randn(40, 128, generator=gen, requires_grad=True)
y = sparsekern.block_sparse_linear(x, w, layout, backend="cpu")
y.square().sum().backward()
expected = x.detach().double() @ w.detach().double().t()
assert (y.double() - expected).abs().max() < 1e-4, "cpu forward differs from the reference"
assert (w.grad[~layout.to_mask()] == 0).all(), "dweight off the layout is not zero"

failures, count = [], 0
for name, arch, dtype, block, tf32 in default_cases():
    if arch != 90:
        continue
    r = compile_kernel(name, arch, dtype, block, tf32)
    count += 1
    if r.spill_bytes or r.tensor_core != expected_tensor_core(name, arch, r.dtype, block, tf32):
        failures.append(f"{name} {r.dtype} {block} tf32={tf32}: {r.spill_bytes} spill bytes, {r.tensor_core}")
for kernel, arch, dtype, has_forced in topk_cases():
    if arch != 90:
        continue
    r = compile_topk(kernel, arch, dtype, has_forced)
    count += 1
    if r["spill_bytes"]:
        failures.append(f"{kernel} {r['dtype']} forced={has_forced}: {r['spill_bytes']} spill bytes")
if failures:
    sys.exit("gpu-versions: Triton kernels under triton %s:\n  " % triton.__version__ + "\n  ".join(failures))
print(f"gpu-versions: torch {torch.__version__}, triton {triton.__version__}: extension {module.built_with} "
      f"imports and runs; {count} Triton kernels compile for sm_90a without spills")

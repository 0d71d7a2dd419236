"""AbsTopK backend "cuda": the CUDA C++ kernel (csrc/cuda/abs_topk*) from the compiled extension.

One CTA a row: a radix select of the k-th largest magnitude (8 bits a pass, shared-memory
histograms) and one write pass (ties by a warp ballot and a CTA-wide count). fp32, fp16 and
bf16, any row length (the row is read from global memory at every pass). Exact in every dtype:
it compares bit patterns, and the kept values are x's bits. Built only when torch has CUDA and
nvcc is found (see setup.py), for the archs of the other CUDA kernels; never run on a GPU yet,
and untuned.
"""

import torch

from ..._alloc import poisoned_output_or_none as _out
from ..._extension import extension
from ...backend import CompiledCudaBackend


class AbsTopKCudaBackend(CompiledCudaBackend):
    kernels = ("abs_topk_cuda",)

    def forward(self, x2d, k):
        values = _out(x2d.shape, x2d)
        # Under the tests' poison switch both outputs come pre-filled (values NaN, kept True),
        # so an entry the kernel does not write shows.
        kept = None if values is None else torch.ones(x2d.shape, dtype=torch.bool, device=x2d.device)
        return extension().abs_topk_cuda(x2d, k, values, kept)

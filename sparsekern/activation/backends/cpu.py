"""AbsTopK backend "cpu": the C++ radix select (csrc/cpu/abs_topk*) from the compiled extension.

Compiled for the baseline and for AVX2 and chosen at run time (``sparsekern.set_cpu_isa``; AVX-512
machines run the AVX2 build: the passes are bound by memory and a scalar histogram). fp32,
fp64, fp16 and bf16; rows dealt to torch's threads. GELU then AbsTopK in one pass (the GELU by
torch's own kernel, a chunk of rows at a time in L2), and its backward likewise.
"""

import torch

from ..._alloc import poisoned_output_or_none as _out
from ..._extension import extension, unavailable_reason
from ...backend import Backend


class AbsTopKCpuBackend(Backend):
    name = "cpu"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def unavailable_reason(self):
        return unavailable_reason("abs_topk_cpu")

    def forward(self, x2d, k):
        values = _out(x2d.shape, x2d)
        # Under the tests' poison switch both outputs come pre-filled (values NaN, kept True),
        # so an entry the kernel does not write shows.
        kept = None if values is None else torch.ones(x2d.shape, dtype=torch.bool)
        return extension().abs_topk_cpu(x2d, k, values, kept)

    def backward(self, grad, kept):
        # One pass into an output on huge pages: torch.where's fresh buffer pays its page faults.
        if not grad.is_contiguous() or grad.shape != kept.shape:
            return torch.where(kept, grad, 0)
        return extension().abs_topk_backward_cpu(grad, kept)

    def gelu_forward(self, x2d, k, approximate):
        values = _out(x2d.shape, x2d)
        kept = None if values is None else torch.ones(x2d.shape, dtype=torch.bool)
        return extension().gelu_abs_topk_cpu(x2d, k, approximate, values, kept)

    def gelu_backward(self, grad, x2d, kept, approximate):
        return extension().gelu_abs_topk_backward_cpu(grad.contiguous(), x2d, kept, approximate)

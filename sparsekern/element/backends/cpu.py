"""Element backend "cpu": C++ kernels (csrc/cpu/esmm_*) from the compiled extension.

Compiled once per instruction set (portable, AVX2 + FMA, AVX-512) and chosen at run time with
the block kernels (``sparsekern.set_cpu_isa``; on "amx" the element products run
the AVX-512 kernels). fp32 and bf16 (computed in fp32, rounded once), all of torch's threads.
"""

import torch

from ..._alloc import poisoned_output_or_none as _out
from ..._extension import extension, unavailable_reason
from ...backend import Backend

_KERNELS = ("esmm_forward_cpu", "esmm_grad_input_cpu", "esmm_grad_weight_cpu")


class ElementCpuBackend(Backend):
    name = "cpu"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.bfloat16)

    def unavailable_reason(self):
        return unavailable_reason(*_KERNELS)

    def forward(self, x, weight, bias, row_ptr, col_idx):
        out = _out((x.shape[0], weight.shape[0]), x)
        return extension().esmm_forward_cpu(x, weight, bias, row_ptr, col_idx, out)

    def grad_input(self, grad_out, weight, col_ptr, row_idx):
        out = _out((grad_out.shape[0], weight.shape[1]), grad_out)
        return extension().esmm_grad_input_cpu(grad_out, weight, col_ptr, row_idx, out)

    def grad_weight(self, grad_out, x, row_ptr, col_idx):
        out = _out((grad_out.shape[1], x.shape[1]), x)
        return extension().esmm_grad_weight_cpu(grad_out, x, row_ptr, col_idx, out)

"""Backend "cpu": C++ kernels for CPU tensors, from the compiled extension."""

import torch

from .._extension import extension, unavailable_reason
from .base import Backend

_KERNELS = ("bsmm_forward_cpu", "bsmm_grad_input_cpu", "bsmm_grad_weight_cpu")


class CpuBackend(Backend):
    name = "cpu"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.bfloat16)

    def unavailable_reason(self):
        return unavailable_reason(*_KERNELS)

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        return extension().bsmm_forward_cpu(x, weight, bias, row_ptr, col_idx, block_out, block_in)

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        return extension().bsmm_grad_input_cpu(grad_out, weight, col_ptr, row_idx, block_out, block_in)

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        return extension().bsmm_grad_weight_cpu(grad_out, x, block_row, col_idx, block_out, block_in)

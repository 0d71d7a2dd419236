"""Backend "cuda": CUDA C++ tensor-core kernels for CUDA tensors, from the compiled extension."""

import torch

from .._extension import extension, unavailable_reason
from .base import Backend

_KERNELS = ("bsmm_forward_cuda", "bsmm_grad_input_cuda", "bsmm_grad_weight_cuda")


class CudaBackend(Backend):
    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def unavailable_reason(self):
        return unavailable_reason(*_KERNELS)

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        return extension().bsmm_forward_cuda(x, weight, bias, row_ptr, col_idx, block_out, block_in)

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        return extension().bsmm_grad_input_cuda(grad_out, weight, col_ptr, row_idx, block_out, block_in)

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        return extension().bsmm_grad_weight_cuda(grad_out, x, block_row, col_idx, block_out, block_in)

"""Backend "cuda": CUDA C++ tensor-core kernels for CUDA tensors, from the compiled extension.

bf16/fp16 run on tensor cores (mma.sync m16n8k16, fp32 accumulation); fp32 runs on TF32
tensor cores where torch allows TF32 for matmuls (``torch.backends.cuda.matmul.allow_tf32``,
read at each call, as the Triton backend does), else as exact fp32 FMAs. Built only when
torch has CUDA and nvcc is found (see setup.py); otherwise ``reasons()`` says so and an
automatic choice falls back to "triton".
"""

import torch

from ..._alloc import poisoned_output_or_none as _out
from ..._extension import extension, unavailable_reason
from ...backend import Backend, built_device_reason
from ...triton.config import use_tf32  # torch-only module: importing it does not import triton

_KERNELS = ("bsmm_forward_cuda", "bsmm_grad_input_cuda", "bsmm_grad_weight_cuda")


class CudaBackend(Backend):
    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def unavailable_reason(self):
        return unavailable_reason(*_KERNELS)

    def device_reason(self, device):
        return built_device_reason(self, device)

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        return extension().bsmm_forward_cuda(
            x, weight, bias, row_ptr, col_idx, block_out, block_in, use_tf32(x.dtype, x.device),
            _out((x.shape[0], weight.shape[0]), x),
        )

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        return extension().bsmm_grad_input_cuda(
            grad_out, weight, col_ptr, row_idx, block_out, block_in, use_tf32(grad_out.dtype, grad_out.device),
            _out((grad_out.shape[0], weight.shape[1]), grad_out),
        )

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        return extension().bsmm_grad_weight_cuda(
            grad_out, x, block_row, col_idx, block_out, block_in, use_tf32(x.dtype, x.device),
            _out((grad_out.shape[1], x.shape[1]), x),
        )

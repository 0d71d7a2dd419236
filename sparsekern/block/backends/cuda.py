"""Backend "cuda": CUDA C++ tensor-core kernels for CUDA tensors, from the compiled extension.

bf16/fp16 run on tensor cores (mma.sync m16n8k16, fp32 accumulation); fp32 runs on TF32
tensor cores where torch allows TF32 for matmuls (``torch.backends.cuda.matmul.allow_tf32``,
read at each call, as the Triton backend does), else as exact fp32 FMAs. Built only when
torch has CUDA and nvcc is found (see setup.py); otherwise ``reasons()`` says so and an
automatic choice falls back to "triton".
"""


from ..._alloc import poisoned_output_or_none as _out
from ..._extension import extension
from ...backend import CompiledCudaBackend
from ...triton.config import use_tf32  # torch-only module: importing it does not import triton

class CudaBackend(CompiledCudaBackend):
    kernels = ("bsmm_forward_cuda", "bsmm_grad_input_cuda", "bsmm_grad_weight_cuda")

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

"""Element backend "cuda": CUDA C++ kernels (csrc/cuda/esmm_*) from the compiled extension.

fp32, fp16 and bf16, on CUDA-core FMAs with fp32 accumulation, outputs rounded once to the
input dtype. No tensor cores: an unstructured sparse row gives no dense tile to feed them, so
TF32 does not apply (fp32 is exact fp32 whatever ``torch.backends.cuda.matmul.allow_tf32``
says). The forward pass and the input gradient are one kernel (walking the row-major and the
transposed index); the weight gradient is a sampled product at the layout's entries, dealt
out by nonzeros. Each call checks the index once per index tensor (see csrc/bindings.cpp).
Built only when torch has CUDA and nvcc is found (see setup.py), for the archs of the block
kernels; never run on a GPU yet, and untuned.
"""


from ..._alloc import poisoned_output_or_none as _out
from ..._extension import extension
from ...backend import CompiledCudaBackend

class ElementCudaBackend(CompiledCudaBackend):
    kernels = ("esmm_forward_cuda", "esmm_grad_input_cuda", "esmm_grad_weight_cuda")

    def forward(self, x, weight, bias, row_ptr, col_idx):
        out = _out((x.shape[0], weight.shape[0]), x)
        return extension().esmm_forward_cuda(x, weight, bias, row_ptr, col_idx, out)

    def grad_input(self, grad_out, weight, col_ptr, row_idx):
        out = _out((grad_out.shape[0], weight.shape[1]), grad_out)
        return extension().esmm_grad_input_cuda(grad_out, weight, col_ptr, row_idx, out)

    def grad_weight(self, grad_out, x, row_ptr, col_idx):
        out = _out((grad_out.shape[1], x.shape[1]), x)
        return extension().esmm_grad_weight_cuda(grad_out, x, row_ptr, col_idx, out)

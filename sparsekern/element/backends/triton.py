"""Element backend "triton": the three products as Triton kernels (``sparsekern/element/triton/``).

The device rules of every "triton" backend (``sparsekern.backend.TritonRules``): CUDA tensors, and
CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``, for testing); chosen
automatically for CUDA tensors only. triton is imported when a product first runs, never at
import. CUDA-core kernels: fp32 is IEEE fp32 (TF32 does not apply); fp16/bf16 accumulate in fp32.
"""

from ...backend import TritonRules


class ElementTritonBackend(TritonRules):
    def forward(self, x, weight, bias, row_ptr, col_idx):
        from ..triton.esmm_fwd import esmm_fwd

        return esmm_fwd(x, weight, bias, row_ptr, col_idx)

    def grad_input(self, grad_out, weight, col_ptr, row_idx):
        from ..triton.esmm_fwd import esmm_fwd

        # The forward kernel again: features are the weight's columns, walked by the transposed index.
        return esmm_fwd(grad_out, weight.t(), None, col_ptr, row_idx)

    def grad_weight(self, grad_out, x, row_ptr, col_idx):
        from ..triton.esmm_dw import esmm_dw

        return esmm_dw(grad_out, x, row_ptr, col_idx)

"""Backend "triton": the three products as Triton kernels (``sparsekern/block/triton/``).

The device rules of every "triton" backend (``sparsekern.backend.TritonRules``): CUDA tensors,
and CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``, which is how it is tested
without a GPU); chosen automatically for CUDA tensors only. triton is imported when a product
first runs, never at import.
"""

from ...backend import TritonRules


class TritonBackend(TritonRules):
    """The block format's products."""

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        from ..triton.bsmm_fwd import bsmm_fwd

        return bsmm_fwd(x, weight.t(), bias, row_ptr, col_idx, block_k=block_in, block_n=block_out)

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        from ..triton.bsmm_fwd import bsmm_fwd

        # The forward kernel again, walking the transposed index over the untransposed weight.
        return bsmm_fwd(grad_out, weight, None, col_ptr, row_idx, block_k=block_out, block_n=block_in)

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        from ..triton.bsmm_dw import bsmm_dw

        return bsmm_dw(grad_out, x, block_row, col_idx, block_out, block_in)

"""Backends of the block format, registered fastest first (the automatic order), chosen and
forced by ``sparsekern.backend.Registry`` (argument or ``SPARSEKERN_BACKEND``); one file per backend.

The contract every block backend implements (2-D operands; any strides unless the
backend makes them contiguous itself; fp32 accumulation; outputs in the input dtype):

``forward(x[M, K], weight[N, K], bias[N] | None, row_ptr, col_idx, block_out, block_in) -> y[M, N]``
    ``y = x @ W.T + bias`` over active blocks, walking the row-major index.
``grad_input(grad_out[M, N], weight[N, K], col_ptr, row_idx, block_out, block_in) -> dx[M, K]``
    ``dx = grad_out @ W`` over active blocks, walking the column-major index.
``grad_weight(grad_out[M, N], x[M, K], block_row, col_idx, block_out, block_in) -> dW[N, K]``
    ``dW = grad_out.T @ x`` on active blocks only, exact zeros elsewhere.
"""

from ...backend import ENV_VAR, Registry
from .cpu import CpuBackend
from .cuda import CudaBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

REGISTRY = Registry(ENV_VAR, (CudaBackend(), TritonBackend(), CpuBackend(), ReferenceBackend()))

select = REGISTRY.select
get_backend = REGISTRY.get
backend_names = REGISTRY.names
available_backends = REGISTRY.available

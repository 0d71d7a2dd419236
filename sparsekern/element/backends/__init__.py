"""Backends of the element format, registered fastest first (the automatic order), chosen and
forced by ``sparsekern.backend.Registry`` as the block format's are, with the same names and
the same ``SPARSEKERN_BACKEND``; one file per backend.

The contract every element backend implements (2-D operands, fp32 accumulation, outputs in
the input dtype; ``ElementLayout`` holds the indices):

``forward(x[M, K], weight[N, K], bias[N] | None, row_ptr, col_idx) -> y[M, N]``
    ``y = x @ W.T + bias`` over the layout's entries, walking the row-major index.
``grad_input(grad_out[M, N], weight[N, K], col_ptr, row_idx) -> dx[M, K]``
    ``dx = grad_out @ W`` over the layout's entries, walking the column-major index.
``grad_weight(grad_out[M, N], x[M, K], row_ptr, col_idx) -> dW[N, K]``
    ``dW = grad_out.T @ x`` at the layout's entries only, exact zeros elsewhere.
"""

from ...backend import ENV_VAR, Registry
from .cpu import ElementCpuBackend
from .cuda import ElementCudaBackend
from .reference import ElementReferenceBackend
from .triton import ElementTritonBackend

REGISTRY = Registry(ENV_VAR, (ElementCudaBackend(), ElementTritonBackend(), ElementCpuBackend(),
                              ElementReferenceBackend()))

select = REGISTRY.select
get_backend = REGISTRY.get
available_backends = REGISTRY.available

"""The three products as torch operators in the ``sparsekern`` namespace.

Each op takes the backend's name and dispatches to it. The fake implementations give
output shapes to ``torch.compile`` and ``opcheck`` without running a kernel. The
autograd wiring (``function.py``) calls only these ops, forward and backward.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backends import get_backend


@torch.library.custom_op("sparsekern::bsmm_forward", mutates_args=())
def bsmm_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], row_ptr: Tensor, col_idx: Tensor,
                 block_out: int, block_in: int, backend: str) -> Tensor:
    """``x[M, K] @ W.T + bias`` over the active blocks: ``[M, N]``."""
    return get_backend(backend).forward(x, weight, bias, row_ptr, col_idx, block_out, block_in)


@bsmm_forward.register_fake
def _(x, weight, bias, row_ptr, col_idx, block_out, block_in, backend):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("sparsekern::bsmm_grad_input", mutates_args=())
def bsmm_grad_input(grad_out: Tensor, weight: Tensor, col_ptr: Tensor, row_idx: Tensor,
                    block_out: int, block_in: int, backend: str) -> Tensor:
    """``grad_out[M, N] @ W`` over the active blocks: ``[M, K]``."""
    return get_backend(backend).grad_input(grad_out, weight, col_ptr, row_idx, block_out, block_in)


@bsmm_grad_input.register_fake
def _(grad_out, weight, col_ptr, row_idx, block_out, block_in, backend):
    return grad_out.new_empty((grad_out.shape[0], weight.shape[1]))


@torch.library.custom_op("sparsekern::bsmm_grad_weight", mutates_args=())
def bsmm_grad_weight(grad_out: Tensor, x: Tensor, block_row: Tensor, col_idx: Tensor,
                     block_out: int, block_in: int, backend: str) -> Tensor:
    """``grad_out.T @ x`` on the active blocks, zeros elsewhere: ``[N, K]``."""
    return get_backend(backend).grad_weight(grad_out, x, block_row, col_idx, block_out, block_in)


@bsmm_grad_weight.register_fake
def _(grad_out, x, block_row, col_idx, block_out, block_in, backend):
    return x.new_empty((grad_out.shape[1], x.shape[1]))

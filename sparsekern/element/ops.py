"""The three element-sparse products as torch operators in the ``sparsekern`` namespace.

Each takes the backend's name and dispatches to it; the fake implementations give output
shapes to ``torch.compile`` and ``opcheck``. ``function.py`` calls only these.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .backends import get_backend


@torch.library.custom_op("sparsekern::esmm_forward", mutates_args=())
def esmm_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], row_ptr: Tensor, col_idx: Tensor,
                 backend: str) -> Tensor:
    """``x[M, K] @ W.T + bias`` over the layout's entries: ``[M, N]``."""
    return get_backend(backend).forward(x, weight, bias, row_ptr, col_idx)


@esmm_forward.register_fake
def _(x, weight, bias, row_ptr, col_idx, backend):
    return x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("sparsekern::esmm_grad_input", mutates_args=())
def esmm_grad_input(grad_out: Tensor, weight: Tensor, col_ptr: Tensor, row_idx: Tensor, backend: str) -> Tensor:
    """``grad_out[M, N] @ W`` over the layout's entries: ``[M, K]``."""
    return get_backend(backend).grad_input(grad_out, weight, col_ptr, row_idx)


@esmm_grad_input.register_fake
def _(grad_out, weight, col_ptr, row_idx, backend):
    return grad_out.new_empty((grad_out.shape[0], weight.shape[1]))


@torch.library.custom_op("sparsekern::esmm_grad_weight", mutates_args=())
def esmm_grad_weight(grad_out: Tensor, x: Tensor, row_ptr: Tensor, col_idx: Tensor, backend: str) -> Tensor:
    """``grad_out.T @ x`` at the layout's entries, zeros elsewhere: ``[N, K]``."""
    return get_backend(backend).grad_weight(grad_out, x, row_ptr, col_idx)


@esmm_grad_weight.register_fake
def _(grad_out, x, row_ptr, col_idx, backend):
    return x.new_empty((grad_out.shape[1], x.shape[1]))

"""Autograd wiring of the element format: ``ElementSparseLinearFunction`` and the functional
entry point ``element_sparse_linear`` (``sparsekern.sparse_linear`` takes either format)."""

from __future__ import annotations

import torch

from .._checks import check_linear_args
from .._linear import autocast_args as _autocast, linear_backward, output_of_shape
from . import ops
from .backends import select
from .layout import ElementLayout


class ElementSparseLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` over the layout's entries; calls only the ``sparsekern`` esmm ops.

    ``dense_weight_grad`` gives the full dense ``dW`` (so pruned weights can grow back);
    otherwise ``dW`` holds the layout's entries only, exact zeros elsewhere.
    """

    @staticmethod
    def forward(x, weight, bias, row_ptr, col_idx, col_ptr, row_idx, backend, dense_weight_grad):
        return ops.esmm_forward(x, weight, bias, row_ptr, col_idx, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, row_ptr, col_idx, col_ptr, row_idx, backend, dense = inputs
        ctx.save_for_backward(x, weight, row_ptr, col_idx, col_ptr, row_idx)
        ctx.backend = backend
        ctx.dense_weight_grad = dense
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, row_ptr, col_idx, col_ptr, row_idx = ctx.saved_tensors
        dx, dw, db = linear_backward(
            ctx, grad_out, x,
            lambda g: ops.esmm_grad_input(g, weight, col_ptr, row_idx, ctx.backend),
            lambda g: ops.esmm_grad_weight(g, x, row_ptr, col_idx, ctx.backend))
        return dx, dw, db, None, None, None, None, None, None


def _choose_backend(name, device, dtype) -> str:
    return select(name, device, dtype, None).name


# Configuration only: under torch.compile a constant of the graph (see sparsekern/block/function.py's note).
_choose_backend._dynamo_marked_constant = True


def element_sparse_linear(x: torch.Tensor, weight: torch.Tensor, layout: ElementLayout,
                          bias: torch.Tensor | None = None, *, backend: str | None = None,
                          dense_weight_grad: bool = False) -> torch.Tensor:
    """``x @ (weight on layout's entries).T + bias`` for ``x`` of shape ``[..., in_features]``.

    ``weight`` is dense ``[out_features, in_features]`` as in ``nn.Linear``; entries off the
    layout count as zero whatever they hold and are never read. ``backend`` forces a backend
    of the element format; ``None`` picks the fastest that can run.
    """
    x, weight, bias = _autocast(x, weight, bias)
    check_linear_args(x, weight, layout, bias, layout_type=ElementLayout)
    chosen = _choose_backend(backend, weight.device, weight.dtype)
    x2d = x.reshape(-1, x.shape[-1])
    y = ElementSparseLinearFunction.apply(x2d, weight, bias, *layout.index_tensors(), chosen, dense_weight_grad)
    return output_of_shape(y, (*x.shape[:-1], weight.shape[0]))

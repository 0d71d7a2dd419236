"""Autograd wiring of the block format: ``SparseLinearFunction`` and the functional entry point ``block_sparse_linear``."""

from __future__ import annotations

import torch

from . import ops
from .._linear import autocast_args as _autocast, linear_backward, output_of_shape
from .._checks import check_linear_args
from .backends import select
from .layout import BlockLayout


class SparseLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` over active blocks; calls only the ``sparsekern`` ops.

    ``dense_weight_grad`` gives the full dense ``dW`` (so pruned weights can grow back
    under a projection schedule); otherwise ``dW`` covers the active blocks only.
    """

    @staticmethod
    def forward(x, weight, bias, row_ptr, col_idx, block_row, col_ptr, row_idx,
                block_out, block_in, backend, dense_weight_grad):
        return ops.bsmm_forward(x, weight, bias, row_ptr, col_idx, block_out, block_in, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, row_ptr, col_idx, block_row, col_ptr, row_idx, bo, bi, backend, dense = inputs
        ctx.save_for_backward(x, weight, col_idx, block_row, col_ptr, row_idx)
        ctx.block_size = (bo, bi)
        ctx.backend = backend
        ctx.dense_weight_grad = dense
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, col_idx, block_row, col_ptr, row_idx = ctx.saved_tensors
        bo, bi = ctx.block_size
        dx, dw, db = linear_backward(
            ctx, grad_out, x,
            lambda g: ops.bsmm_grad_input(g, weight, col_ptr, row_idx, bo, bi, ctx.backend),
            lambda g: ops.bsmm_grad_weight(g, x, block_row, col_idx, bo, bi, ctx.backend))
        return dx, dw, db, None, None, None, None, None, None, None, None, None


def _choose_backend(name, device, dtype, block_size) -> str:
    return select(name, device, dtype, block_size).name


# Pure configuration (environment, installed packages, the built extension): under
# torch.compile it runs once at trace time and its answer is a constant of the graph.
# This is what torch.compiler.assume_constant_result does; setting the mark directly keeps
# `import sparsekern` from importing torch._dynamo (and with it triton), 1.5 s here.
# tests/test_ops_compile.py fails if the mark stops working.
_choose_backend._dynamo_marked_constant = True


def block_sparse_linear(x: torch.Tensor, weight: torch.Tensor, layout: BlockLayout,
                        bias: torch.Tensor | None = None, *, backend: str | None = None,
                        dense_weight_grad: bool = False) -> torch.Tensor:
    """``x @ (weight on layout's active blocks).T + bias``, for ``x`` of shape ``[..., in_features]``.

    ``weight`` is dense ``[out_features, in_features]`` as in ``nn.Linear``; entries outside
    the active blocks count as zero whatever they hold. ``backend`` forces a backend
    (see ``sparsekern.available_backends``); ``None`` picks the fastest that can run.
    """
    x, weight, bias = _autocast(x, weight, bias)
    check_linear_args(x, weight, layout, bias, layout_type=BlockLayout)
    chosen = _choose_backend(backend, weight.device, weight.dtype, layout.block_size)
    bo, bi = layout.block_size
    x2d = x.reshape(-1, x.shape[-1])
    y = SparseLinearFunction.apply(
        x2d, weight, bias, *layout.index_tensors(), bo, bi, chosen, dense_weight_grad
    )
    return output_of_shape(y, (*x.shape[:-1], weight.shape[0]))

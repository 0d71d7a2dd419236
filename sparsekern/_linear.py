"""What the autograd Functions of every format share: the backward rule of a linear layer and
the autocast of its arguments."""

from __future__ import annotations

import torch

from .dense_grad_weight import dense_grad_weight


def linear_backward(ctx, grad_out, x, grad_input, sampled_grad_weight):
    """``(dx, dW, db)`` of ``y = x @ W.T + b`` for every format's autograd Function, given its two
    sparse products as callables of ``grad_out``: ``dW`` is the full dense ``grad_out.T @ x``
    under ``ctx.dense_weight_grad`` (exploiting exact zeros of ``x`` or ``grad_out``:
    ``dense_grad_weight.py``), else the sampled product; ``None`` where no gradient is needed."""
    # Kernels index raw memory: an expanded gradient (stride 0) must become real.
    grad_out = grad_out.contiguous()
    dx = grad_input(grad_out) if ctx.needs_input_grad[0] else None
    dw = None
    if ctx.needs_input_grad[1]:
        if not ctx.dense_weight_grad:
            dw = sampled_grad_weight(grad_out)
        elif torch.is_grad_enabled():  # create_graph: the operator has no derivative of its own
            dw = grad_out.t() @ x
        else:
            dw = dense_grad_weight(grad_out, x)
    db = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
    return dx, dw, db


def autocast_args(x, weight, bias):
    """Under ``torch.autocast`` compute in the autocast dtype, as ``F.linear`` does."""
    if not isinstance(weight, torch.Tensor) or not torch.is_autocast_enabled(weight.device.type):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(weight.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                 for t in (x, weight, bias))


def output_of_shape(y: torch.Tensor, shape) -> torch.Tensor:
    """The Function's 2-D output ``y`` reshaped to ``shape``, as a tensor of its own: a view (what
    ``y.reshape`` gives) makes FSDP2 warn at every forward, since an in-place op on a returned view
    would skip its pre-backward hook. Nothing else holds ``y``, so ``_unsafe_view`` (what torch's
    matmul does) is safe."""
    return torch.ops.aten._unsafe_view(y, shape)

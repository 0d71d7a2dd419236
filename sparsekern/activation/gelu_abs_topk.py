"""GELU then AbsTopK in one pass, the activation after the MLP's first layer in the published
weight-sparse transformers: ``GeluAbsTopKFunction`` (autograd), the functional
``gelu_abs_topk`` and the module ``GeluAbsTopK``."""

from __future__ import annotations

import torch

from . import ops, reference
from .abs_topk import _choose_backend, check_abs_topk_args, check_module_args, first_order_pass

APPROXIMATIONS = ("none", "tanh")  # F.gelu's


def _check_approximate(approximate) -> None:
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate must be one of {APPROXIMATIONS} (as in F.gelu), got {approximate!r}")


class GeluAbsTopKFunction(torch.autograd.Function):
    """``(values, kept) = abs_topk(gelu(x), k)``; calls only the ``sparsekern::gelu_abs_topk``
    operator. The gradient: ``dx = where(kept, gelu_backward(grad, x), 0)``."""

    @staticmethod
    def forward(x, k, approximate, backend):
        return ops.gelu_abs_topk(x, k, approximate, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, approximate, backend = inputs
        _, kept = output
        ctx.save_for_backward(x, kept)
        ctx.mark_non_differentiable(kept)
        ctx.approximate, ctx.backend = approximate, backend

    @staticmethod
    def backward(ctx, grad_values, grad_kept):
        x, kept = ctx.saved_tensors
        fused = first_order_pass(ctx.backend, "gelu_backward")
        if fused is not None:
            x2d = ops.as_rows(x)
            dx = fused(grad_values.reshape(x2d.shape), x2d, kept.reshape(x2d.shape), ctx.approximate)
            return dx.view(x.shape), None, None, None
        return reference.gelu_abs_topk_backward(grad_values, x, kept, ctx.approximate), None, None, None


def gelu_abs_topk(x: torch.Tensor, k: int, *, approximate: str = "none", backend: str | None = None) -> torch.Tensor:
    """``abs_topk(F.gelu(x, approximate=approximate), k)`` in one pass over ``x``.

    The values are exactly those of the two calls (the GELU is torch's own kernel, so its
    values are ``F.gelu``'s of ``x`` made contiguous, bit for bit in float32, float16 and
    bfloat16; float64 can differ in the last bit, as torch's own GELU does between its vector
    loop and the scalar one it runs on tails); what fusing saves is the GELU's output, which never
    reaches memory, and in the backward the pass over it: on the CPU, at x[2048, 8192] fp32
    and k = 2048, forward and backward each take about half the time of the two calls (the
    README's "Activation sparsity"). Arguments and the order of magnitudes as in ``abs_topk``;
    ``approximate``: ``"none"`` (erf) or ``"tanh"``, as in ``F.gelu``.

    Gradient: ``dx = where(kept, gelu_backward(grad, x), 0)``. This equals the gradient of the
    two calls except at an unkept +-Inf, where theirs is NaN (``0 * gelu'(inf)``) and this one 0
    (and on the CPU within the last bit where torch's own derivative varies between its vector loop
    and its tails: float64, and float32's tanh form with AVX-512).

    Backends: ``"cpu"`` fuses the two; the others (``"cuda"``, ``"triton"``, ``"reference"``)
    run torch's GELU and then their AbsTopK.
    """
    check_abs_topk_args(x, k, backend)
    _check_approximate(approximate)
    chosen = _choose_backend(backend, x.device, x.dtype)
    values, _ = GeluAbsTopKFunction.apply(x, k, approximate, chosen)
    return values


class GeluAbsTopK(torch.nn.Module):
    """``gelu_abs_topk(x, k)`` as a module: GELU, then each row's ``k`` largest magnitudes.

    ``k`` is a plain attribute (change it to anneal); ``approximate`` as in ``F.gelu``;
    ``backend`` forces an AbsTopK backend.
    """

    def __init__(self, k: int, *, approximate: str = "none", backend: str | None = None):
        super().__init__()
        check_module_args(k, backend)
        _check_approximate(approximate)
        self.k, self.approximate, self.backend = k, approximate, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_abs_topk(x, self.k, approximate=self.approximate, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"k={self.k}" + (f", approximate={self.approximate!r}" if self.approximate != "none" else "")
                + (f", backend={self.backend!r}" if self.backend is not None else ""))

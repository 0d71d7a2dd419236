"""AbsTopK, the activation sparsity of the published weight-sparse transformers: argument
checks, ``AbsTopKFunction`` (autograd), the functional ``abs_topk`` and the module ``AbsTopK``."""

from __future__ import annotations

import torch

from . import ops
from .backends import get_backend, select


def check_abs_topk_args(x, k, backend=None) -> None:
    """Raises TypeError/ValueError naming the argument, before any kernel runs."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (rows run along the last), got a 0-d tensor")
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)):
        raise TypeError(f"k must be a Python int, got {type(k).__name__}")
    n = x.shape[-1]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] (the length of x's last dimension), got {k}")
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a backend's name or None, got {type(backend).__name__}")


class AbsTopKFunction(torch.autograd.Function):
    """``(values, kept) = abs_topk(x, k)``; calls only the ``sparsekern::abs_topk`` operator.

    The gradient flows to the kept entries only: ``dx = where(kept, grad, 0)`` (``kept`` is not
    differentiable). The backward is itself differentiable, so double backward works (its
    derivative in ``x`` is zero almost everywhere).
    """

    @staticmethod
    def forward(x, k, backend):
        return ops.abs_topk(x, k, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, kept = output
        ctx.save_for_backward(kept)
        ctx.mark_non_differentiable(kept)
        ctx.backend = inputs[2]

    @staticmethod
    def backward(ctx, grad_values, grad_kept):
        (kept,) = ctx.saved_tensors
        fused = first_order_pass(ctx.backend, "backward")
        if fused is not None:
            return fused(grad_values, kept), None, None
        return torch.where(kept, grad_values, 0), None, None


def first_order_pass(backend: str, method: str):
    """The backend's own backward pass ``method`` (an optional part of the contract), or None:
    also None when the backward must itself be differentiable (create_graph) or is traced."""
    fused = getattr(get_backend(backend), method, None)
    if fused is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    return fused


def _choose_backend(name, device, dtype) -> str:
    return select(name, device, dtype, None).name


# Configuration only: under torch.compile a constant of the graph (see sparsekern/block/function.py's note).
_choose_backend._dynamo_marked_constant = True


def abs_topk(x: torch.Tensor, k: int, *, backend: str | None = None) -> torch.Tensor:
    """Keep the ``k`` largest-magnitude entries of every row of ``x`` (along its last
    dimension), zeros elsewhere.

    ``x``: a floating tensor (fp32, fp64, fp16, bf16) of any leading dimensions, rows of length
    ``n = x.shape[-1]``; ``k``: a Python int in ``[0, n]``. Returns a new tensor of x's shape,
    dtype and device: the kept entries are x's values bit for bit, the others exactly +0
    (``k == 0``: all zeros; ``k == n``: a copy of x). Empty tensors are fine.

    Order of magnitudes: a NaN counts as larger than every number (so a NaN is kept, and shows
    in the output, before anything else), then +-Inf, then finite entries by ``|x|``; -0 and +0
    tie (``|x| = 0``). Ties (NaNs among themselves included) go to the lower index, as in the
    weight projection (``sparsekern.topk_project_``).

    Gradient: to the kept entries only, ``dx = where(kept, grad, 0)``.

    ``backend`` forces an AbsTopK backend by name (``"cuda"``, ``"triton"``, ``"cpu"``, ``"reference"``; see
    ``sparsekern.activation.backends``), as does ``SPARSEKERN_BACKEND``; ``None`` picks the
    fastest that can run. Bad arguments raise TypeError/ValueError naming them before any
    kernel runs.
    """
    check_abs_topk_args(x, k, backend)
    chosen = _choose_backend(backend, x.device, x.dtype)
    values, _ = AbsTopKFunction.apply(x, k, chosen)
    return values


def check_module_args(k, backend) -> None:
    """A module's ``k`` and ``backend`` (``k``'s upper bound is known at the first call)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be a Python int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a backend's name or None, got {type(backend).__name__}")


class AbsTopK(torch.nn.Module):
    """``abs_topk(x, k)`` as a module (an activation): keeps each row's ``k`` largest magnitudes.

    ``k`` is a plain attribute (change it to anneal); ``backend`` forces an AbsTopK backend.
    """

    def __init__(self, k: int, *, backend: str | None = None):
        super().__init__()
        check_module_args(k, backend)
        self.k = k
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return abs_topk(x, self.k, backend=self.backend)

    def extra_repr(self) -> str:
        return f"k={self.k}" + (f", backend={self.backend!r}" if self.backend is not None else "")

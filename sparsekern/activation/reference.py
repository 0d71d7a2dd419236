"""Sort-based reference of AbsTopK: the oracle every backend is tested against, and the
fallback of last resort (pure PyTorch, any device, any floating dtype).

Exact by construction: two stable descending sorts decide the order of every row, so ties go
to the lowest index. Correctness over speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def magnitude_order(x: torch.Tensor) -> torch.Tensor:
    """Indices along the last dimension of ``x``, largest magnitude first: every NaN, then
    +-Inf, then finite entries by ``|x|`` (-0 and +0 are both 0); equal magnitudes (NaNs among
    themselves) in index order."""
    nan = torch.isnan(x)
    # Magnitudes first (NaN counted as Inf for now), then NaN before everything, each sort
    # stable: the second keeps the first's order among entries it does not separate.
    by_magnitude = torch.sort(torch.where(nan, torch.inf, x.abs()), dim=-1, descending=True, stable=True).indices
    nan_first = torch.sort(nan.gather(-1, by_magnitude).to(torch.uint8), dim=-1, descending=True, stable=True).indices
    return by_magnitude.gather(-1, nan_first)


def abs_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, kept)`` for ``x`` of any shape (rows along the last dimension), ``0 <= k <=
    x.shape[-1]``: ``kept`` marks each row's ``k`` largest magnitudes (``magnitude_order``),
    ``values`` holds them bit for bit and +0 elsewhere. Both are new tensors."""
    kept = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if k > 0:
        kept.scatter_(-1, magnitude_order(x)[..., :k], True)
    return torch.where(kept, x, torch.zeros((), dtype=x.dtype, device=x.device)), kept


def gelu_abs_topk(x: torch.Tensor, k: int, approximate: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """``abs_topk(F.gelu(x, approximate=approximate), k)``."""
    return abs_topk(F.gelu(x, approximate=approximate), k)


def gelu_abs_topk_backward(grad: torch.Tensor, x: torch.Tensor, kept: torch.Tensor,
                           approximate: str = "none") -> torch.Tensor:
    """Its gradient in ``x``: ``where(kept, gelu_backward(grad, x), 0)``."""
    derivative = torch.ops.aten.gelu_backward(grad, x, approximate=approximate)
    return torch.where(kept, derivative, torch.zeros((), dtype=x.dtype, device=x.device))

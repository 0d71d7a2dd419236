"""Argument checks, run before any kernel: each error names the argument and what was expected."""

from __future__ import annotations

import math

import torch


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')} on {t.device}"


def check_floating(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def check_linear_args(x, weight, layout, bias, layout_type) -> None:
    """The checks of ``block_sparse_linear`` (``layout_type=BlockLayout``) and of
    ``element_sparse_linear`` (``ElementLayout``); raises TypeError/ValueError naming the argument."""
    check_floating(x, "x")
    check_floating(weight, "weight")
    if not isinstance(layout, layout_type):
        raise TypeError(f"layout must be a sparsekern.{layout_type.__name__}, got {type(layout).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x.shape[-1] must equal in_features={in_features}, got x of shape {tuple(x.shape)}")
    if tuple(layout.shape) != (out_features, in_features):
        raise ValueError(f"layout.shape must equal weight.shape {tuple(weight.shape)}, got {layout.shape}")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise TypeError(f"x must match weight ({_describe(weight)}), got {_describe(x)}")
    if layout.device != weight.device:
        raise ValueError(f"layout must be on weight's device {weight.device}, got {layout.device} (use layout.to())")
    if bias is not None:
        check_floating(bias, "bias")
        if tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise TypeError(f"bias must match weight ({_describe(weight)}), got {_describe(bias)}")


def has_internal_overlap(t: torch.Tensor) -> bool:
    """Whether two entries of the (at most) 2-D ``t`` are one memory location (an expanded or as_strided
    view), exactly. With both sides above 1, strides ``a <= b`` and sides ``na``, ``nb``: some
    ``i * b == j * a`` with ``0 < |i| < nb``, ``|j| < na`` exists iff ``b // g < na`` and
    ``a // g < nb``, ``g = gcd(a, b)`` (``torch._debug_has_internal_overlap`` answers "too hard"
    for such views)."""
    if t.numel() == 0:
        return False
    dims = sorted((abs(stride), size) for stride, size in zip(t.stride(), t.shape) if size > 1)
    if any(stride == 0 for stride, _ in dims):
        return True
    if len(dims) < 2:
        return False
    (a, na), (b, nb) = dims
    g = math.gcd(a, b)
    return b // g < na and a // g < nb


def check_no_internal_overlap(t: torch.Tensor, name: str) -> None:
    """For a tensor written in place: raises ValueError naming it when two of its entries share memory."""
    if has_internal_overlap(t):
        raise ValueError(f"{name} has overlapping memory (expanded?); clone() it")

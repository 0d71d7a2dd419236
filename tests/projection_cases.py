"""Weights and checks shared by the projection tests."""

import torch

from sparsekern.block.layout import expand_block_mask, normalize_block_size
from sparsekern.projection import reference, topk_project_
from sparsekern.projection.backends import REGISTRY

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KINDS = ("normal", "ties", "negzero", "tiny")
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}


def projection_backends_here(dtype=torch.float32) -> list[str]:
    """Projection backends that can run CPU tensors of ``dtype`` in this process."""
    return [n for n in REGISTRY.names() if not REGISTRY.get(n).reasons(torch.device("cpu"), dtype, None)]


def make_weight(kind: str, shape, dtype, generator) -> torch.Tensor:
    """Fresh random weights: plain normal; drawn from a handful of values (heavy ties,
    zeros and both signs included); with many negative zeros; tiny magnitudes (denormal
    in fp32)."""
    if kind == "normal":
        w = torch.randn(shape, generator=generator)
    elif kind == "ties":
        w = torch.randint(-3, 4, shape, generator=generator).float() * 0.25
    elif kind == "negzero":
        w = torch.randn(shape, generator=generator)
        w = torch.where(w.abs() < 0.6, -0.0, w)
    elif kind == "tiny":
        scale = 1e-40 if dtype == torch.float32 else 1e-3
        w = torch.randn(shape, generator=generator) * scale
    else:
        raise ValueError(kind)
    return w.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bitwise view: equality of bits tells -0 from +0."""
    return t.view(_INT_VIEW[t.dtype])


def expected_projection(w, k, min_per_row=0, min_per_col=0, granularity="element", block_size=None):
    """The projection by the sort-based rule, computed without any backend."""
    if granularity == "block":
        scores = reference.block_norms(w, block_size)
        keep = reference.topk_keep_mask(scores, k, min_per_row, min_per_col)
        mask = expand_block_mask(keep, block_size, w.shape)
        kept = scores[keep]
    else:
        keep = reference.topk_keep_mask(w.abs().float() if w.dtype != torch.float64 else w.abs(),
                                        k, min_per_row, min_per_col)
        mask = keep
        kept = w.abs()[keep].float()
    threshold = kept.min().item() if kept.numel() else float("inf")
    return torch.where(mask, w, torch.zeros_like(w)), threshold


def check_projection(w, k, backend, *, min_per_row=0, min_per_col=0, granularity="element", block_size=None):
    """Runs one projection and compares everything it reports with the rule."""
    if block_size is not None:
        block_size = normalize_block_size(block_size)
    expected, threshold = expected_projection(w, k, min_per_row, min_per_col, granularity, block_size)
    got = w.clone()
    result = topk_project_(got, k, granularity=granularity, block_size=block_size, min_per_row=min_per_row,
                           min_per_col=min_per_col, backend=backend)
    assert torch.equal(bits(got), bits(expected)), f"{backend}: projected weight differs from the rule"
    assert result.k == k
    assert result.nnz == int(torch.count_nonzero(expected))
    assert result.threshold == threshold or (result.threshold != result.threshold and threshold != threshold)
    if block_size is not None:
        assert torch.equal(result.block_counts, reference.block_counts(expected, block_size))
    else:
        assert result.block_counts is None
    return result

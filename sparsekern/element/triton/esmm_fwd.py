"""Dense x element-sparse product: ``out[M, F] = a[M, R] @ S.T``, S an element-sparse ``[F, R]``
matrix listed by output feature (a compressed index: ``ptr[F + 1]``, ``idx[nnz]``).

The forward pass calls it with ``a = x``, the weight and its row-major index (features are the
weight's rows); the input gradient with ``a = grad_out``, the same weight read transposed (its
strides swapped) and the column-major index (features are the weight's columns). One kernel,
two products: only the strides and the index differ.

Why the transposed dense operand: each nonzero ``(f, r)`` needs column ``r`` of ``a`` over the
program's rows. ``a`` is row-major, so that column is strided (one 32-byte sector fetched per
2-byte element); in ``a.T`` (``[R, M]``, made contiguous by the launcher, once per call) it is a
contiguous run of BLOCK_M elements, a whole cache line. The copy costs one pass over ``a``;
gathering from ``a`` itself would cost up to 16 times more traffic for every nonzero. The
output is written row-major directly (BLOCK_N consecutive features per row: whole sectors), so
it needs no transposing back.

CUDA cores only (gathers and FMAs, no ``tl.dot``): fp32 is IEEE fp32, TF32 does not apply.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._alloc import new_output
from .config import esmm_fwd_config


@triton.jit
def _esmm_fwd_kernel(
    at_ptr, s_ptr, bias_ptr, out_ptr, ptr_ptr, idx_ptr,
    M, F,
    stride_ar, stride_am, stride_sf, stride_sr, stride_om, stride_of,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_NZ: tl.constexpr,
):
    # One program: BLOCK_M rows of out by BLOCK_N consecutive features. Programs of the same
    # rows are adjacent in the (1-D, so unbounded) grid: they run together and share a.T's
    # columns in L2.
    pid = tl.program_id(0)
    tiles_f = tl.cdiv(F, BLOCK_N)
    pid_m = pid // tiles_f
    f0 = (pid % tiles_f) * BLOCK_N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_c = tl.arange(0, BLOCK_N)
    # Accumulated as [features, rows]: the same orientation as the gathered [nonzeros, rows] tiles.
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for c in tl.range(0, BLOCK_N):
        f = f0 + c
        # int32 or int64 pointers (the loop runs in their type); past the last feature, no nonzeros.
        start = tl.load(ptr_ptr + f, mask=f < F, other=0)
        end = tl.load(ptr_ptr + f + 1, mask=f < F, other=0)
        part = tl.zeros((BLOCK_NZ, BLOCK_M), dtype=tl.float32)
        for p0 in tl.range(start, end, BLOCK_NZ):
            p = p0 + tl.arange(0, BLOCK_NZ)
            mask_p = p < end
            r = tl.load(idx_ptr + p, mask=mask_p, other=0).to(tl.int64)  # promote before the strides
            s = tl.load(s_ptr + f.to(tl.int64) * stride_sf + r * stride_sr, mask=mask_p, other=0.0)
            a = tl.load(at_ptr + r[:, None] * stride_ar + offs_m[None, :].to(tl.int64) * stride_am,
                        mask=mask_p[:, None] & mask_m[None, :], other=0.0)
            part += s.to(tl.float32)[:, None] * a.to(tl.float32)
        acc = tl.where(offs_c[:, None] == c, tl.sum(part, axis=0)[None, :], acc)
    offs_f = f0 + offs_c
    mask_f = offs_f < F
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)[:, None]
    out = out_ptr + offs_m[None, :].to(tl.int64) * stride_om + offs_f[:, None].to(tl.int64) * stride_of
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_f[:, None] & mask_m[None, :])


def esmm_fwd(a: torch.Tensor, s: torch.Tensor, bias, ptr: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``a[M, R] @ S.T`` for ``S[F, R]`` holding ``s[f, idx[p]]`` for ``p`` in ``ptr[f]:ptr[f+1]``.

    ``s`` is read at the listed entries only and may be any strided view (the input gradient
    passes ``weight.T``); ``a`` any strides (an expanded gradient too): it is transposed here.
    """
    M = a.shape[0]
    F = s.shape[0]
    out = new_output((M, F), a.dtype, a.device)
    if M == 0 or F == 0:
        return out
    if idx.numel() == 0:  # nothing to gather (and no pointer into an empty tensor to pass)
        return out.copy_(bias.expand(M, F)) if bias is not None else out.zero_()
    at = a.t().contiguous()  # [R, M], rows contiguous: see the module docstring
    bias = bias.contiguous() if bias is not None else None
    cfg = esmm_fwd_config(a.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(F, cfg["BLOCK_N"]),)
    _esmm_fwd_kernel[grid](
        at, s, bias if bias is not None else out, out, ptr.contiguous(), idx.contiguous(),
        M, F,
        at.stride(0), at.stride(1), s.stride(0), s.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_NZ=cfg["BLOCK_NZ"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out

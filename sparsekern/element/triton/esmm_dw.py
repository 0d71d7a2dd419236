"""Sampled dense-dense product for the weight gradient: ``dW[n, k] = sum_m grad_out[m, n] * x[m, k]``
at the layout's entries only; the launcher returns exact zeros everywhere else (never a dense matmul).

Work is dealt by nonzeros, not rows: a program owns BLOCK_NZ consecutive entries of the
row-major index and reduces over every row of the batch, so a row holding half the nonzeros
is spread over half the programs. Each program finds its entries' rows by a binary search of
``row_ptr`` (log2(N) loads of a small, cached array per program, amortised over the whole
reduction) rather than reading a per-nonzero row id that the launcher would have to build on
every call (an O(nnz) temporary, and a host sync for its size).

Both dense operands are read transposed (``grad_out.T``, ``x.T``, made contiguous by the
launcher) for the reason the forward kernel gives: the reduction of entry ``(n, k)`` then
walks row ``n`` of ``grad_out.T`` and row ``k`` of ``x.T``, contiguous runs of BLOCK_M
elements, instead of two strided columns.

CUDA cores only: fp32 is IEEE fp32, TF32 does not apply.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .config import esmm_dw_config


@triton.jit
def _esmm_dw_kernel(
    gt_ptr, xt_ptr, dw_ptr, ptr_ptr, idx_ptr,
    nnz, M, N, search_steps,
    stride_gn, stride_gm, stride_xk, stride_xm, stride_wn, stride_wk,
    BLOCK_M: tl.constexpr, BLOCK_NZ: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64) * BLOCK_NZ + tl.arange(0, BLOCK_NZ)
    mask_p = p < nnz
    k = tl.load(idx_ptr + p, mask=mask_p, other=0).to(tl.int64)
    # The row of entry p: the last n with row_ptr[n] <= p. Invariant row_ptr[lo] <= p < row_ptr[hi]
    # (row_ptr[0] = 0, row_ptr[N] = nnz); search_steps >= log2(N) halvings close it to one row.
    target = tl.minimum(p, nnz - 1)
    lo = tl.zeros((BLOCK_NZ,), dtype=tl.int32)
    hi = tl.full((BLOCK_NZ,), N, dtype=tl.int32)
    for _ in tl.range(0, search_steps):
        mid = lo + (hi - lo) // 2
        right = tl.load(ptr_ptr + mid) <= target
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    n = lo.to(tl.int64)
    acc = tl.zeros((BLOCK_NZ, BLOCK_M), dtype=tl.float32)
    for m0 in tl.range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask = mask_p[:, None] & (offs_m < M)[None, :]
        g = tl.load(gt_ptr + n[:, None] * stride_gn + offs_m[None, :].to(tl.int64) * stride_gm, mask=mask, other=0.0)
        x = tl.load(xt_ptr + k[:, None] * stride_xk + offs_m[None, :].to(tl.int64) * stride_xm, mask=mask, other=0.0)
        acc += g.to(tl.float32) * x.to(tl.float32)
    dw = tl.sum(acc, axis=1)
    tl.store(dw_ptr + n * stride_wn + k * stride_wk, dw.to(dw_ptr.dtype.element_ty), mask=mask_p)


def esmm_dw(grad_out: torch.Tensor, x: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
    """``grad_out[M, N].T @ x[M, K]`` at the entries ``(n, col_idx[p])``, ``p`` in
    ``row_ptr[n]:row_ptr[n+1]``; exact zeros elsewhere. Any strides."""
    M, N = grad_out.shape
    K = x.shape[1]
    dw = torch.zeros((N, K), dtype=x.dtype, device=x.device)
    nnz = col_idx.numel()
    if nnz == 0 or M == 0:
        return dw
    gt = grad_out.t().contiguous()  # [N, M]
    xt = x.t().contiguous()  # [K, M]
    cfg = esmm_dw_config(x.dtype)
    _esmm_dw_kernel[(triton.cdiv(nnz, cfg["BLOCK_NZ"]),)](
        gt, xt, dw, row_ptr.contiguous(), col_idx.contiguous(),
        nnz, M, N, max(1, (N - 1).bit_length()),
        gt.stride(0), gt.stride(1), xt.stride(0), xt.stride(1), dw.stride(0), dw.stride(1),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_NZ=cfg["BLOCK_NZ"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return dw

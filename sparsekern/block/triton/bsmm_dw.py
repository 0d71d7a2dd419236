"""Sampled dense-dense product for the weight gradient: ``dW = grad_out.T @ x`` on active blocks.

One program per active block; it reduces over all rows of the batch. Blocks outside
the layout are never computed: the launcher returns exact zeros there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...triton.config import use_tf32
from .config import bsmm_dw_config


@triton.jit
def _bsmm_dw_kernel(
    g_ptr, x_ptr, dw_ptr, row_ptr, col_ptr,
    M, N, K,
    stride_gm, stride_gn, stride_xm, stride_xk, stride_wn, stride_wk,
    ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_OUT: tl.constexpr, BLOCK_IN: tl.constexpr,
):
    p = tl.program_id(0)
    offs_n = tl.load(row_ptr + p) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    offs_k = tl.load(col_ptr + p) * BLOCK_IN + tl.arange(0, BLOCK_IN)
    mask_n = offs_n < N
    mask_k = offs_k < K
    acc = tl.zeros((BLOCK_OUT, BLOCK_IN), dtype=tl.float32)
    for m0 in tl.range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        g_t = tl.load(  # grad_out tile, transposed on load: [BLOCK_OUT, BLOCK_M]
            g_ptr + offs_n[:, None].to(tl.int64) * stride_gn + offs_m[None, :].to(tl.int64) * stride_gm,
            mask=mask_n[:, None] & mask_m[None, :], other=0.0,
        )
        x = tl.load(
            x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :].to(tl.int64) * stride_xk,
            mask=mask_m[:, None] & mask_k[None, :], other=0.0,
        )
        if ALLOW_TF32:
            acc = tl.dot(g_t, x, acc, input_precision="tf32")
        else:
            acc = tl.dot(g_t, x, acc, input_precision="ieee")
    out = dw_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :].to(tl.int64) * stride_wk
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=mask_n[:, None] & mask_k[None, :])


def bsmm_dw(grad_out: torch.Tensor, x: torch.Tensor, block_row: torch.Tensor, col_idx: torch.Tensor,
            block_out: int, block_in: int) -> torch.Tensor:
    """``grad_out[M, N].T @ x[M, K]`` on the blocks ``(block_row[p], col_idx[p])``; zeros elsewhere."""
    M, N = grad_out.shape
    K = x.shape[1]
    dw = torch.zeros((N, K), dtype=x.dtype, device=x.device)
    nnz = block_row.numel()
    if nnz == 0:
        return dw
    cfg = bsmm_dw_config(block_out, block_in, x.dtype)
    _bsmm_dw_kernel[(nnz,)](
        grad_out, x, dw, block_row, col_idx,
        M, N, K,
        grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1), dw.stride(0), dw.stride(1),
        ALLOW_TF32=use_tf32(x.dtype, x.device),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_OUT=block_out, BLOCK_IN=block_in,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return dw

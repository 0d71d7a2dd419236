"""Dense x block-sparse product: ``out = a @ B``, B block-sparse, listed by output block column.

The forward pass calls it with ``B = weight.T`` and the row-major index; the input
gradient with ``B = weight`` and the column-major (transposed) index. One kernel,
two products: only the strides and the index differ.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..._alloc import new_output
from ...triton.config import use_tf32
from .config import bsmm_fwd_config


@triton.jit
def _bsmm_fwd_kernel(
    a_ptr, b_ptr, bias_ptr, out_ptr, ptr_ptr, idx_ptr,
    M, K, N,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, ALLOW_TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # One program: BLOCK_M rows of out by one block column j of B (BLOCK_N wide).
    pid_m = tl.program_id(0)
    j = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = j * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    start = tl.load(ptr_ptr + j)
    end = tl.load(ptr_ptr + j + 1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for p in tl.range(start, end):
        k = tl.load(idx_ptr + p) * BLOCK_K + offs_k  # int32 index: promote before multiplying strides
        mask_k = k < K
        a = tl.load(
            a_ptr + offs_m[:, None].to(tl.int64) * stride_am + k[None, :].to(tl.int64) * stride_ak,
            mask=mask_m[:, None] & mask_k[None, :], other=0.0,
        )
        b = tl.load(
            b_ptr + k[:, None].to(tl.int64) * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn,
            mask=mask_k[:, None] & mask_n[None, :], other=0.0,
        )
        if ALLOW_TF32:
            acc = tl.dot(a, b, acc, input_precision="tf32")
        else:
            acc = tl.dot(a, b, acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :].to(tl.int64) * stride_on
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def bsmm_fwd(a: torch.Tensor, b: torch.Tensor, bias, ptr: torch.Tensor, idx: torch.Tensor,
             block_k: int, block_n: int) -> torch.Tensor:
    """``a[M, K] @ b[K, N]`` over the blocks ``(idx[p], j)`` for ``p`` in ``ptr[j]:ptr[j+1]``.

    ``b`` may be any strided view (the forward pass passes ``weight.T``); ``a`` any strides.
    """
    M, K = a.shape
    N = b.shape[1]
    out = new_output((M, N), a.dtype, a.device)
    if M == 0 or N == 0:
        return out
    cfg = bsmm_fwd_config(block_k, block_n, a.dtype)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]), ptr.numel() - 1)
    _bsmm_fwd_kernel[grid](
        a, b, bias if bias is not None else out, out, ptr, idx,
        M, K, N,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, ALLOW_TF32=use_tf32(a.dtype, a.device),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_K=block_k, BLOCK_N=block_n,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out

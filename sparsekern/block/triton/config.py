"""Launch parameters of the block kernels, shared by their launchers and the ahead-of-time checks."""

from __future__ import annotations

import torch


def bsmm_fwd_config(block_k: int, block_n: int, dtype: torch.dtype) -> dict:
    """Tile and launch sizes for the dense x block-sparse kernel.

    BLOCK_M rows of the dense operand per program; the other two tile sides are the
    block. Wide blocks get fewer rows so the fp32 accumulator stays in registers.
    """
    wide = block_k * block_n >= 128 * 64
    return dict(BLOCK_M=64, num_warps=8 if wide else 4, num_stages=3 if dtype != torch.float32 else 2)


def bsmm_dw_config(block_out: int, block_in: int, dtype: torch.dtype) -> dict:
    """Tile sizes for the sampled weight gradient: one block per program, BLOCK_M rows per step."""
    # Measured with ptxas for sm_80/sm_90a: small blocks fit 4 warps over 32 rows; larger ones
    # need 8 warps over 64 rows to keep the fp32 accumulator out of local memory (no spills).
    small = block_out * block_in <= 32 * 32
    return dict(BLOCK_M=32 if small else 64, num_warps=4 if small else 8, num_stages=3 if dtype != torch.float32 else 2)

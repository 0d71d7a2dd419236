"""Launch sizes of the element kernels, shared by their launchers and the ahead-of-time checks.

Untuned: chosen by reasoning about an H100 (no GPU has timed them yet). Both kernels run on
CUDA cores (gathers and FMAs, no tensor cores), so fp32 is IEEE fp32 whatever
``torch.backends.cuda.matmul.allow_tf32`` says: TF32 does not apply to them. num_stages=1:
their loads are gathers, which Triton's software pipeliner does not stage (ptxas reports
the same code for 1, 2 and 3).
"""

from __future__ import annotations

import torch


def esmm_fwd_config(dtype: torch.dtype) -> dict:
    """The forward / input-gradient kernel: a program owns BLOCK_M rows of the output by BLOCK_N
    consecutive output features, and walks each feature's nonzeros BLOCK_NZ at a time.

    BLOCK_M = 64: the gathered row of the transposed dense operand is 64 contiguous elements
    (128 bytes in 16-bit: one cache line). BLOCK_N = 16: each output row's store is 16
    contiguous elements (a whole 32-byte sector in 16-bit). BLOCK_NZ = 16: 16 gathers in flight
    per step without wasting most lanes at low density (16 nonzeros a feature is density 1/128
    at 2048 inputs)."""
    return dict(BLOCK_M=64, BLOCK_N=16, BLOCK_NZ=16, num_warps=4, num_stages=1)


def esmm_dw_config(dtype: torch.dtype) -> dict:
    """The weight-gradient kernel: a program owns BLOCK_NZ consecutive nonzeros (so a row holding
    half of them is spread over half the programs) and reduces over all rows of the batch,
    BLOCK_M at a time (128 contiguous elements of each transposed operand). ptxas -v: 48-64
    registers, no spills (BLOCK_M=64 gets 32 registers and spills 8 bytes in bf16 on sm_80)."""
    return dict(BLOCK_M=128, BLOCK_NZ=16, num_warps=4, num_stages=1)

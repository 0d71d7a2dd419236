"""What every Triton launcher and the ahead-of-time checks share, whatever the format: the
dtype names, the TF32 rule and the interpreter test. Torch-only: importing it does not import
triton. The launch sizes of each format's kernels are in ``sparsekern/<format>/triton/config.py``."""

from __future__ import annotations

import os

import torch

TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def use_tf32(dtype: torch.dtype, device: torch.device) -> bool:
    """fp32 runs on TF32 tensor cores only where torch itself allows it."""
    return dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32


def interpreting() -> bool:
    """Whether this process runs Triton kernels under the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

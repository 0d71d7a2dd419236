"""Backend "triton": the three products as Triton kernels.

Runs CUDA tensors, and CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``
set before triton is imported), which is how it is tested without a GPU. It is never
chosen automatically for CPU tensors: the interpreter is for checking, not for speed.
"""

import importlib.util
import os

import torch

from .base import Backend


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonRules(Backend):
    """What every "triton" backend (block or element format) can run, and when it is chosen."""

    name = "triton"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def unavailable_reason(self):
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
        return None

    def device_reason(self, device):
        if device.type == "cuda" or (device.type == "cpu" and _interpreting()):
            return None
        return f"runs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), not {device.type}"

    def automatic(self, device) -> bool:
        return device.type == "cuda"


class TritonBackend(TritonRules):
    """The block format's products."""

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        from ..triton.bsmm_fwd import bsmm_fwd

        return bsmm_fwd(x, weight.t(), bias, row_ptr, col_idx, block_k=block_in, block_n=block_out)

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        from ..triton.bsmm_fwd import bsmm_fwd

        # The forward kernel again, walking the transposed index over the untransposed weight.
        return bsmm_fwd(grad_out, weight, None, col_ptr, row_idx, block_k=block_out, block_n=block_in)

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        from ..triton.bsmm_dw import bsmm_dw

        return bsmm_dw(grad_out, x, block_row, col_idx, block_out, block_in)

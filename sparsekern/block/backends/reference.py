"""Backend "reference": the pure-PyTorch oracle, runnable on any device."""

import torch

from ...backend import Backend
from .. import reference


class ReferenceBackend(Backend):
    name = "reference"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def device_reason(self, device):
        return None  # dense torch ops run wherever torch does

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        return reference.forward(x, weight, bias, row_ptr, col_idx, block_out, block_in)

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        return reference.grad_input(grad_out, weight, col_ptr, row_idx, block_out, block_in)

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        return reference.grad_weight(grad_out, x, block_row, col_idx, block_out, block_in)

"""Element backend "reference": the pure-PyTorch oracle, runnable on any device."""

import torch

from ...backend import Backend
from .. import reference


class ElementReferenceBackend(Backend):
    name = "reference"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def device_reason(self, device):
        return None  # dense torch ops run wherever torch does

    def forward(self, x, weight, bias, row_ptr, col_idx):
        return reference.forward(x, weight, bias, row_ptr, col_idx)

    def grad_input(self, grad_out, weight, col_ptr, row_idx):
        return reference.grad_input(grad_out, weight, col_ptr, row_idx)

    def grad_weight(self, grad_out, x, row_ptr, col_idx):
        return reference.grad_weight(grad_out, x, row_ptr, col_idx)

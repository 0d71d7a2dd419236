"""Backend "cpu": C++ kernels for CPU tensors, from the compiled extension.

The kernels (csrc/cpu/bsmm_*) are compiled once per instruction set (portable, AVX2 + FMA,
AVX-512, and AMX for bf16) and the best one the CPU reports is used; ``sparsekern.cpu_isa`` /
``sparsekern.set_cpu_isa`` (or the environment variable ``SPARSEKERN_CPU_ISA``, read on first
use) choose a lesser one, for every format's CPU kernels (``sparsekern/_cpu_isa.py``). fp32 and
bf16 inputs, fp32 accumulation; float64 is not supported (the reference backend runs it).

On "amx", bf16 runs on the AMX tiles: the forward and input gradient when their shape fits
them (``bf16_on_tiles``), the weight gradient always; fp32, and bf16 products that do not
fit, run the AVX-512 kernels.
"""

import torch

from ..._alloc import poisoned_output_or_none as _out
from ..._cpu_isa import cpu_extension
from ..._extension import extension, unavailable_reason
from ...backend import Backend

_KERNELS = ("bsmm_forward_cpu", "bsmm_grad_input_cpu", "bsmm_grad_weight_cpu")


def bf16_on_tiles(n_in: int, block_size) -> bool:
    """Whether a bf16 product ``[M, n_in] @ W.T`` with blocks ``(block_out, block_in)`` runs on
    the AMX tiles now: ISA "amx", ``n_in`` and ``block_in`` multiples of 32, ``block_out`` of 16.
    (The input gradient is the product ``grad_out @ W``: ``n_in = out_features`` and the block
    transposed.)"""
    block_out, block_in = block_size
    return cpu_extension().cpu_bf16_on_tiles(n_in, block_out, block_in)


class CpuBackend(Backend):
    name = "cpu"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.bfloat16)

    def unavailable_reason(self):
        return unavailable_reason(*_KERNELS)

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        out = _out((x.shape[0], weight.shape[0]), x)
        return extension().bsmm_forward_cpu(x, weight, bias, row_ptr, col_idx, block_out, block_in, out)

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        out = _out((grad_out.shape[0], weight.shape[1]), grad_out)
        return extension().bsmm_grad_input_cpu(grad_out, weight, col_ptr, row_idx, block_out, block_in, out)

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        out = _out((grad_out.shape[1], x.shape[1]), x)
        return extension().bsmm_grad_weight_cpu(grad_out, x, block_row, col_idx, block_out, block_in, out)

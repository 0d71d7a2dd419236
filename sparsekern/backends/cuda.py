"""Backend "cuda": CUDA C++ tensor-core kernels for CUDA tensors, from the compiled extension.

bf16/fp16 run on tensor cores (mma.sync m16n8k16, fp32 accumulation); fp32 runs on TF32
tensor cores where torch allows TF32 for matmuls (``torch.backends.cuda.matmul.allow_tf32``,
read at each call, as the Triton backend does), else as exact fp32 FMAs. Built only when
torch has CUDA and nvcc is found (see setup.py); otherwise ``reasons()`` says so and an
automatic choice falls back to "triton".
"""

import torch

from .._alloc import poisoned_output_or_none as _out
from .._extension import extension, unavailable_reason
from ..triton.config import use_tf32  # torch-only module: importing it does not import triton
from .base import Backend

_KERNELS = ("bsmm_forward_cuda", "bsmm_grad_input_cuda", "bsmm_grad_weight_cuda")


def _runs_on(arch: str, major: int, minor: int) -> bool:
    """A cubin for "8.0" runs on 8.x with x >= 0; an arch-specific one ("9.0a") on 9.0 only;
    "8.0+PTX" also carries PTX, which the driver compiles for any later GPU."""
    if arch.endswith("+PTX"):
        built = tuple(int(v) for v in arch[: -len("+PTX")].rstrip("a").split("."))
        return (major, minor) >= built
    specific = arch.endswith("a")
    built_major, built_minor = (int(v) for v in arch.rstrip("a").split("."))
    if specific:
        return (major, minor) == (built_major, built_minor)
    return major == built_major and minor >= built_minor


def built_device_reason(backend: Backend, device) -> str | None:
    """``device_reason`` of a backend of the compiled CUDA kernels (block or element format):
    the device type, then, once the extension is there, whether it was built for this GPU."""
    why = Backend.device_reason(backend, device)
    if why or backend.unavailable_reason():
        return why
    # The default build holds cubins only (no PTX, unless TORCH_CUDA_ARCH_LIST asks for
    # "+PTX"): a GPU none of the built archs runs on has no kernel image.
    built = extension().cuda_archs.split("/")
    major, minor = torch.cuda.get_device_capability(device)
    if not any(_runs_on(arch, major, minor) for arch in built):
        return f"built for sm {', '.join(built)}, not this GPU's {major}.{minor} (set TORCH_CUDA_ARCH_LIST and rebuild)"
    return None


class CudaBackend(Backend):
    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def unavailable_reason(self):
        return unavailable_reason(*_KERNELS)

    def device_reason(self, device):
        return built_device_reason(self, device)

    def forward(self, x, weight, bias, row_ptr, col_idx, block_out, block_in):
        return extension().bsmm_forward_cuda(
            x, weight, bias, row_ptr, col_idx, block_out, block_in, use_tf32(x.dtype, x.device),
            _out((x.shape[0], weight.shape[0]), x),
        )

    def grad_input(self, grad_out, weight, col_ptr, row_idx, block_out, block_in):
        return extension().bsmm_grad_input_cuda(
            grad_out, weight, col_ptr, row_idx, block_out, block_in, use_tf32(grad_out.dtype, grad_out.device),
            _out((grad_out.shape[0], weight.shape[1]), grad_out),
        )

    def grad_weight(self, grad_out, x, block_row, col_idx, block_out, block_in):
        return extension().bsmm_grad_weight_cuda(
            grad_out, x, block_row, col_idx, block_out, block_in, use_tf32(x.dtype, x.device),
            _out((grad_out.shape[1], x.shape[1]), x),
        )

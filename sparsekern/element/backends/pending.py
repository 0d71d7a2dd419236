"""GPU backends of the element format that have no kernels yet: registered under their names
so that forcing one (``backend="triton"``, ``SPARSEKERN_BACKEND=cuda``) says so, instead of
"unknown backend", and an automatic choice passes over them (to ``reference`` on a GPU)."""

import torch

from ...backends.base import Backend


class PendingBackend(Backend):
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def __init__(self, name: str):
        self.name = name

    def unavailable_reason(self):
        return f"the element format has no {self.name} kernels yet (the block format has)"

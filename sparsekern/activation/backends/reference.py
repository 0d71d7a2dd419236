"""AbsTopK backend "reference": the sort-based oracle (``sparsekern/activation/reference.py``),
runnable on any device and dtype."""

import torch

from ...backend import Backend
from .. import reference


class AbsTopKReferenceBackend(Backend):
    name = "reference"
    devices = ("cpu", "cuda")
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

    def device_reason(self, device):
        return None  # torch's sort runs wherever torch does

    def forward(self, x2d, k):
        return reference.abs_topk(x2d, k)

"""A stand-in for Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2's layers), written
as it is there, so the tests of foreign layers need not import transformers."""

import torch
from torch import nn


class Conv1D(nn.Module):
    """``y = x @ weight + bias`` with ``weight`` ``[nx, nf]`` (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)

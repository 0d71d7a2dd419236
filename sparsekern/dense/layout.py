"""``MaskLayout``: a set of entries known by a bool mask and its count, before any index is
built. The dense format needs no more than the mask, so a layer running dense (the first,
dense steps of an annealed schedule) keeps one of these after each projection instead of
building an ``ElementLayout`` index it would not use; the index is built from the mask only
when something asks for it (another format chosen, ``SparseLinear.layout`` read)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MaskLayout(NamedTuple):
    mask: torch.Tensor  # bool [out_features, in_features]
    nnz: int  # mask's true entries, as the projection counted them

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)

    @property
    def device(self) -> torch.device:
        return self.mask.device

    @property
    def density(self) -> float:
        return self.nnz / self.mask.numel()

    def to_mask(self) -> torch.Tensor:
        return self.mask

    def to(self, device) -> "MaskLayout":
        return MaskLayout(self.mask.to(device), self.nnz)

"""``SparseLinear``: a drop-in for ``nn.Linear`` whose weight is block-sparse."""

from __future__ import annotations

import torch
from torch import nn

from .function import block_sparse_linear
from .layout import BlockLayout, block_grid, check_density, count_for_density, normalize_block_size


def block_norms(weight: torch.Tensor, block_size) -> torch.Tensor:
    """L2 norm of every block of ``weight``: ``[block rows, block cols]`` (edge blocks partial), fp32."""
    bo, bi = block_size
    n_rows, n_cols = block_grid(tuple(weight.shape), (bo, bi))
    padded = weight.new_zeros((n_rows * bo, n_cols * bi), dtype=torch.float32)
    padded[: weight.shape[0], : weight.shape[1]] = weight.detach()
    return padded.view(n_rows, bo, n_cols, bi).square().sum(dim=(1, 3)).sqrt()


def top_blocks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest scores; ties go to the lowest row-major index."""
    order = torch.sort(scores.flatten(), descending=True, stable=True).indices
    keep = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    keep[order[:k]] = True
    return keep.view_as(scores)


def _refresh_layout_after_load(module, incompatible_keys) -> None:
    module.refresh_layout()


class SparseLinear(nn.Module):
    """``nn.Linear`` with a block-sparse weight.

    The same ``weight`` and ``bias`` parameters, shapes, ``state_dict`` keys and
    initialisation as ``nn.Linear``; a random layout of ``density`` (fraction of active
    blocks) drawn from torch's RNG at construction, the weight zeroed outside it.
    Loading a state_dict refreshes the layout from the loaded weight's nonzeros.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 density: float = 0.0625, block_size=32, dense_grad: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self._configure(in_features, out_features, density, block_size, dense_grad)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        nn.Linear.reset_parameters(self)  # nn.Linear's own initialisation, draw for draw
        self.layout = BlockLayout.random(
            (out_features, in_features), self.block_size, self.density, device=self.weight.device
        )
        with torch.no_grad():
            self.weight.masked_fill_(~self.layout.to_mask(), 0)

    def _configure(self, in_features, out_features, density, block_size, dense_grad):
        self.in_features = in_features
        self.out_features = out_features
        self.density = check_density(density)
        self.block_size = normalize_block_size(block_size)
        self.dense_grad = bool(dense_grad)
        # A loaded state_dict (a dense nn.Linear's included) brings its own sparsity.
        self.register_load_state_dict_post_hook(_refresh_layout_after_load)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_sparse_linear(x, self.weight, self.layout, self.bias, dense_weight_grad=self.dense_grad)

    # ------------------------------------------------------------------ layout
    def refresh_layout(self) -> BlockLayout:
        """Recompute the layout from the weight's nonzeros (blocks holding any)."""
        self.layout = BlockLayout.from_weight(self.weight, self.block_size)
        return self.layout

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self.layout = self.layout.to(self.weight.device)  # the index lives with the weight
        return self

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_dense(cls, linear: nn.Linear, *, density: float, block_size=32,
                   dense_grad: bool = False) -> "SparseLinear":
        """Keep the blocks of ``linear.weight`` of largest L2 norm (ties: lowest row-major index)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        density = check_density(density)
        block_size = normalize_block_size(block_size)
        weight = linear.weight
        scores = block_norms(weight, block_size)
        keep = top_blocks(scores, count_for_density(density, scores.numel()))
        layout = BlockLayout(keep, block_size, tuple(weight.shape))
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._configure(linear.in_features, linear.out_features, density, block_size, dense_grad)
        with torch.no_grad():
            module.weight = nn.Parameter(torch.where(layout.to_mask(), weight, 0))
            if linear.bias is not None:
                module.bias = nn.Parameter(linear.bias.detach().clone())
            else:
                module.register_parameter("bias", None)
        module.layout = layout
        return module

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (weight zero outside the layout)."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.where(self.layout.to_mask(), self.weight, 0))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density}, block_size={self.block_size}")

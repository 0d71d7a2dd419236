"""``SparseLinear``: a drop-in for ``nn.Linear`` whose weight is block-sparse."""

from __future__ import annotations

import torch
from torch import nn

from .function import block_sparse_linear
from .layout import BlockLayout, block_grid, check_density, count_for_density, normalize_block_size
from .projection.reference import block_norms, top_blocks  # noqa: F401  (re-exported)
from .projection.topk_project import prepare_projection


def _refresh_layout_after_load(module, incompatible_keys) -> None:
    module.refresh_layout()


class SparseLinear(nn.Module):
    """``nn.Linear`` with a block-sparse weight.

    The same ``weight`` and ``bias`` parameters, shapes, ``state_dict`` keys and
    initialisation as ``nn.Linear``; a random layout of ``density`` (fraction of active
    blocks) drawn from torch's RNG at construction, the weight zeroed outside it.
    Loading a state_dict refreshes the layout from the loaded weight's nonzeros.
    """

    #: What ``project_`` keeps by default: single entries ("element") or whole blocks ("block").
    granularity: str = "element"

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
        # A meta module (deferred initialisation) keeps its layout on the CPU until to_empty().
        layout_device = "cpu" if self.weight.is_meta else self.weight.device
        self.layout = BlockLayout.random(
            (out_features, in_features), self.block_size, self.density, device=layout_device
        )
        with torch.no_grad():
            self.weight.masked_fill_(~self.layout.to_mask().to(self.weight.device), 0)

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

    def project_(self, density: float | None = None, *, granularity: str | None = None, min_per_row: int = 0,
                 backend: str | None = None):
        """Keep the weight's largest-magnitude entries (or blocks) at ``density``, in place, and
        rebuild the layout from what is left, in the same pass.

        ``k = count_for_density(density, n)``, ``n`` entries (``granularity="element"``) or
        blocks of ``block_size`` (``"block"``). Defaults: ``self.density`` and
        ``self.granularity``. ``min_per_row`` floors every output row (neuron), in entries
        (blocks). Returns the ``sparsekern.ProjectionResult``; see ``sparsekern.topk_project_``.
        """
        return self.apply_projection(self.plan_projection(density, granularity=granularity,
                                                          min_per_row=min_per_row, backend=backend))

    def plan_projection(self, density: float | None = None, *, granularity: str | None = None,
                        min_per_row: int = 0, backend: str | None = None):
        """The first half of ``project_``: checks and plans, writes nothing (a bad argument
        raises here with the weight untouched). ``apply_projection`` carries it out."""
        granularity = granularity or self.granularity
        return prepare_projection(
            self.weight, self._projection_k(density, granularity), granularity=granularity,
            block_size=self.block_size, min_per_row=min_per_row, backend=backend,
        )

    def _projection_k(self, density, granularity: str) -> int:
        density = self.density if density is None else check_density(density)
        if granularity == "block":
            n_rows, n_cols = block_grid((self.out_features, self.in_features), self.block_size)
            return count_for_density(density, n_rows * n_cols)
        return count_for_density(density, self.out_features * self.in_features)

    def apply_projection(self, plan):
        """The second half of ``project_``: writes the weight and rebuilds the layout."""
        result = plan.apply()
        self.layout = BlockLayout.from_block_mask(result.block_counts > 0, self.block_size,
                                                  (self.out_features, self.in_features))
        return result

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if not self.weight.is_meta:
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

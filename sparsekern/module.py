"""``SparseLinear``: a drop-in for ``nn.Linear`` whose weight is sparse, in blocks or entry by entry."""

from __future__ import annotations

import torch
from torch import nn

from .dense import MaskLayout, masked_dense_linear
from .element import ElementLayout
from .formats import FORMATS, check_format, choose_format, entry_count, layout_for, whole_blocks  # noqa: F401
from .block.layout import BlockLayout, block_grid, check_density, count_for_density, normalize_block_size
from .linear import sparse_linear
from .projection.reference import block_norms, top_blocks  # noqa: F401  (re-exported)
from .projection.topk_project import prepare_projection


def _refresh_layout_after_load(module, incompatible_keys) -> None:
    module.refresh_layout()


class SparseLinear(nn.Module):
    """``nn.Linear`` with a sparse weight.

    The same ``weight`` and ``bias`` parameters, shapes, ``state_dict`` keys and
    initialisation as ``nn.Linear``; a random layout of ``density`` drawn from torch's RNG at
    construction, the weight zeroed outside it: with ``format="element"`` an
    ``ElementLayout``, ``density`` the fraction of entries; otherwise a ``BlockLayout``,
    ``density`` the fraction of active blocks.

    ``format``: ``"auto"`` (the default) runs whichever of dense ``F.linear`` on the masked
    weight, the block kernels or the element kernels is cheapest for the layer's current
    nonzeros on its device and dtype (``sparsekern.formats``), chosen again each time the
    layout changes (construction, projection, ``refresh_layout``, a loaded state_dict, a
    move to another device or dtype); ``"dense"``, ``"block"`` or ``"element"`` hold from
    construction on. ``.format`` is what runs now; ``.layout`` its layout (a ``BlockLayout``
    or an ``ElementLayout``; the dense format keeps the layout whose mask it applies);
    every format computes the same function. Loading a state_dict refreshes the layout from
    the loaded weight's nonzeros.
    """

    #: The formats a layer can be asked for.
    FORMATS = FORMATS
    #: What ``project_`` keeps by default: single entries ("element") or whole blocks ("block").
    granularity: str = "element"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 density: float = 0.0625, block_size=32, dense_grad: bool = False, format: str = "auto",
                 device=None, dtype=None):
        super().__init__()
        self._configure(in_features, out_features, density, block_size, dense_grad, format)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        nn.Linear.reset_parameters(self)  # nn.Linear's own initialisation, draw for draw
        # A meta module (deferred initialisation) keeps its layout on the CPU until to_empty().
        layout_device = "cpu" if self.weight.is_meta else self.weight.device
        shape = (out_features, in_features)
        if self.requested_format == "element":
            layout = ElementLayout.random(shape, self.density, device=layout_device)
        else:
            layout = BlockLayout.random(shape, self.block_size, self.density, device=layout_device)
        with torch.no_grad():
            self.weight.masked_fill_(~layout.to_mask().to(self.weight.device), 0)
        self._adopt(layout)

    def _configure(self, in_features, out_features, density, block_size, dense_grad, format="auto"):
        #: What the user asked for: "auto", "dense", "block" or "element".
        self.requested_format = check_format(format)
        self.in_features = in_features
        self.out_features = out_features
        self.density = check_density(density)
        self.block_size = normalize_block_size(block_size)
        self.dense_grad = bool(dense_grad)
        # A loaded state_dict (a dense nn.Linear's included) brings its own sparsity.
        self.register_load_state_dict_post_hook(_refresh_layout_after_load)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == "dense":
            return masked_dense_linear(x, self.weight, self._layout, self.bias, mask=self._dense_mask,
                                       dense_weight_grad=self.dense_grad)
        return sparse_linear(x, self.weight, self._layout, self.bias, dense_weight_grad=self.dense_grad)

    # ------------------------------------------------------------------ layout
    @property
    def layout(self):
        """The layout the current format runs (``BlockLayout`` or ``ElementLayout``). A layer
        running dense over entries keeps only their mask; the index is built when asked for."""
        if isinstance(self._layout, MaskLayout):
            self._layout = self._sparsity = ElementLayout.from_mask(self._layout.mask)
        return self._layout

    def _adopt(self, sparsity, whole=None) -> None:
        """Make ``sparsity`` (a ``BlockLayout``, an ``ElementLayout``, or a ``MaskLayout`` when
        no index was built) the layer's function and choose the format that runs it.
        ``whole``: for entries, the ``BlockLayout`` of exactly them when they are whole blocks
        (then the block kernels are a candidate too)."""
        device = "cpu" if self.weight.is_meta else self.weight.device
        if self.requested_format == "auto":
            self.format = choose_format(sparsity, device, self.weight.dtype, blocks=whole)
        else:
            self.format = self.requested_format
        self._sparsity, self._whole_blocks = sparsity, whole
        self._layout = layout_for(self.format, sparsity, blocks=whole)
        self._dense_mask = self._layout.to_mask() if self.format == "dense" else None

    def refresh_layout(self):
        """Recompute the layout from the weight's nonzeros (block format: the blocks holding any)
        and, with ``format="auto"``, choose the format again."""
        if self.requested_format == "block":
            self._adopt(BlockLayout.from_weight(self.weight, self.block_size))
            return self.layout
        entries = ElementLayout.from_weight(self.weight)
        whole = None
        if self.requested_format == "auto" and entries.nnz:
            blocks = BlockLayout.from_weight(self.weight, self.block_size)
            whole = blocks if entry_count(blocks) == entries.nnz else None
        self._adopt(entries, whole)
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
        k = self._projection_k(density, granularity)
        return prepare_projection(
            self.weight, k, granularity=granularity,
            block_size=self.block_size, min_per_row=min_per_row, backend=backend,
            element_layout=self._sparsity_of(granularity) == "element" and not self._runs_dense(k),
        )

    def _runs_dense(self, k: int) -> bool:
        """Whether the layer will run dense with at most ``k`` entries: then a projection need
        not list the index (the mask is enough; ``apply_projection`` checks the count after)."""
        if self.requested_format in ("block", "element"):
            return False
        if self.requested_format == "dense":
            return True
        shape = (self.out_features, self.in_features)
        return choose_format(MaskLayout(torch.empty(shape, dtype=torch.bool, device="meta"), k),
                             self.weight.device, self.weight.dtype) == "dense"

    def _sparsity_of(self, granularity: str) -> str:
        """The kind of layout a projection at ``granularity`` leaves: the block format keeps
        the blocks holding nonzeros, the element format the nonzeros; the others follow
        the projection (whole blocks stay blocks, so the block kernels stay a candidate)."""
        if self.requested_format in ("block", "element"):
            return self.requested_format
        return granularity

    def _projection_k(self, density, granularity: str) -> int:
        density = self.density if density is None else check_density(density)
        if granularity == "block":
            n_rows, n_cols = block_grid((self.out_features, self.in_features), self.block_size)
            return count_for_density(density, n_rows * n_cols)
        return count_for_density(density, self.out_features * self.in_features)

    def apply_projection(self, plan):
        """The second half of ``project_``: writes the weight and rebuilds the layout from the
        projection's own pass (its per-block counts, or the element index it listed while
        writing), then, with ``format="auto"``, chooses the format again."""
        result = plan.apply()
        shape = (self.out_features, self.in_features)
        if self._sparsity_of(plan.granularity) == "element":
            whole = None
            if self.requested_format == "auto" and result.nnz:
                whole = whole_blocks(result.block_counts, self.block_size, shape)
            entries = result.element_layout
            if entries is None:  # expected to run dense: the mask of what is left is enough
                entries = MaskLayout(self.weight.detach() != 0, result.nnz)
            self._adopt(entries, whole)
        else:
            self._adopt(BlockLayout.from_block_mask(result.block_counts > 0, self.block_size, shape))
        return result

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if not self.weight.is_meta:
            # The index lives with the weight; a new device or dtype may favour another format.
            device = self.weight.device
            whole = self._whole_blocks.to(device) if self._whole_blocks is not None else None
            self._adopt(self._sparsity.to(device), whole)
        return self

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_dense(cls, linear: nn.Linear, *, density: float, block_size=32,
                   dense_grad: bool = False, format: str = "auto") -> "SparseLinear":
        """Keep the blocks of ``linear.weight`` of largest L2 norm (ties: lowest row-major index),
        or with ``format="element"`` its entries of largest magnitude (the projection's rule);
        ``format`` as in the constructor."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        density = check_density(density)
        block_size = normalize_block_size(block_size)
        check_format(format)
        weight = linear.weight
        if format == "element":
            kept = weight.detach().clone()
            prepare_projection(kept, count_for_density(density, kept.numel()), granularity="element").apply()
            layout = ElementLayout.from_weight(kept)
        else:
            scores = block_norms(weight, block_size)
            keep = top_blocks(scores, count_for_density(density, scores.numel()))
            layout = BlockLayout(keep, block_size, tuple(weight.shape))
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._configure(linear.in_features, linear.out_features, density, block_size, dense_grad, format)
        with torch.no_grad():
            module.weight = nn.Parameter(torch.where(layout.to_mask(), weight, 0))
            if linear.bias is not None:
                module.bias = nn.Parameter(linear.bias.detach().clone())
            else:
                module.register_parameter("bias", None)
        module._adopt(layout)
        return module

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` computing the same function (weight zero outside the layout)."""
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.where(self._layout.to_mask(), self.weight, 0))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        block = f", block_size={self.block_size}" if self.format == "block" else ""
        running = f" (running {self.format!r})" if self.requested_format == "auto" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, density={self.density}, "
                f"format={self.requested_format!r}{running}{block}")

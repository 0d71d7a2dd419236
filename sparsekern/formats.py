"""The formats a ``SparseLinear`` runs in, and the cost model behind ``format="auto"``.

Every format computes the same function, ``x @ (W * mask).T + b``; they differ in cost:

* ``"dense"``: ``F.linear`` on the masked weight, whatever the density;
* ``"block"``: the block kernels, in proportion to the active blocks;
* ``"element"``: the element kernels, in proportion to the nonzeros, plus reading ``x`` and
  writing ``y`` once (the floor no sparse kernel goes below).

``estimate_costs`` models each as a multiple of dense time at the same shape, from a few
constants per device measured with ``sparsekern-bench`` (forward, fp32, all threads;
see the README's tables). A format is a candidate only where it computes the layer's
function exactly (the block kernels read whole blocks, so they run an element layout only
when it is a union of whole blocks) and where a compiled backend runs it (the reference
backends are oracles, not candidates). The choice is deterministic: it depends on the
layout, device and dtype, never on a timing.
"""

from __future__ import annotations

import torch

from .element.layout import ElementLayout
from .block.layout import BlockLayout

FORMATS = ("auto", "dense", "block", "element")
RUN_FORMATS = ("dense", "block", "element")


def check_format(format) -> str:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return format


# Time relative to dense F.linear at the same shape, for density d (nonzeros / entries, or
# active blocks / blocks) of an [N, K] weight:
#   element: element_per_density * d + element_floor * (1/N + 1/K) * 1024
#   block:   block_per_density * d
# CPU figures, fitted to forward timings (fp32, 2 threads, sparse against F.linear in the same
# run) on a 2-core AMD EPYC with AVX2: element kernels at 512 x 512, 2048 x 512, 512 x 2048
# and 8192 x 2048, densities 1/256 to 3/8 (e.g. 0.82x dense time at d = 1/4, 0.029x at 1/256
# on 8192 x 2048); block kernels 12.4-12.8x faster than dense at 1/16 and 3.2-3.4x at 1/4
# there (block 32, 4096 x 4096), 12.6x and 3.3x on a Xeon with AVX-512; the portable build keeps
# the older, slower figure (2.7, never fitted to the portable build itself). GPU figures: no GPU has timed these kernels yet; they encode the published finding
# that CUDA-core kernels beat tensor-core dense only below about 1/64 density in 16-bit (and
# below about 1/8 against fp32 dense).
_CPU = {"element_per_density": 3.0, "element_floor": 0.045, "block_per_density": 1.3}
_CPU_PORTABLE = {**_CPU, "block_per_density": 2.7}
_CUDA_16BIT = {"element_per_density": 50.0, "element_floor": 0.01, "block_per_density": 1.5}
_CUDA_FP32 = {"element_per_density": 8.0, "element_floor": 0.01, "block_per_density": 1.5}


def _constants(device: torch.device, dtype: torch.dtype) -> dict:
    if device.type == "cuda":
        return _CUDA_FP32 if dtype == torch.float32 else _CUDA_16BIT
    from ._cpu_isa import cpu_isa  # loads the extension: only asked when the block kernels can run

    try:
        isa = cpu_isa()
    except Exception:  # noqa: BLE001  (no extension: the block kernels are no candidate anyway)
        isa = "portable"
    return _CPU_PORTABLE if isa == "portable" else _CPU


def entry_count(blocks: BlockLayout) -> int:
    """The entries inside ``blocks``' active blocks (edge blocks clipped), from the block grid."""
    (bo, bi), (n, k) = blocks.block_size, blocks.shape
    mask = blocks.to_block_mask()
    rows = torch.full((mask.shape[0],), bo, dtype=torch.int64, device=mask.device)
    cols = torch.full((mask.shape[1],), bi, dtype=torch.int64, device=mask.device)
    rows[-1], cols[-1] = n - bo * (mask.shape[0] - 1), k - bi * (mask.shape[1] - 1)
    return int((mask * rows[:, None] * cols[None, :]).sum())


def whole_blocks(block_counts: torch.Tensor, block_size, shape) -> BlockLayout | None:
    """The block layout of an entry set whose nonzeros per block are ``block_counts``, when
    every block is empty or full (else None: the block kernels would run another function)."""
    blocks = BlockLayout.from_block_mask(block_counts > 0, block_size, shape)
    return blocks if entry_count(blocks) == int(block_counts.sum()) else None


def candidates(layout, device, dtype, *, blocks: BlockLayout | None = None) -> list[str]:
    """The formats that compute ``layout``'s function exactly and have a compiled backend for
    ``device`` and ``dtype``; "dense" always. ``blocks``: for an ``ElementLayout``, the block
    layout of exactly its entries when they are whole blocks (the block kernels need that)."""
    from .block import backends as block_backends
    from .element import backends as element_backends

    device = torch.device(device)
    blocks = layout if isinstance(layout, BlockLayout) else blocks
    found = ["dense"]
    if blocks is not None and block_backends.REGISTRY.automatic_choice(device, dtype, blocks.block_size) not in (
            None, "reference"):
        found.append("block")
    if element_backends.REGISTRY.automatic_choice(device, dtype, None) not in (None, "reference"):
        found.append("element")
    return found


def estimate_costs(layout, device, dtype, *, blocks: BlockLayout | None = None) -> dict:
    """``format -> estimated time relative to dense`` for every candidate format."""
    device = torch.device(device)
    found = candidates(layout, device, dtype, blocks=blocks)
    c = _constants(device, dtype)
    out_features, in_features = layout.shape
    costs = {"dense": 1.0}
    if "element" in found:
        nnz = entry_count(layout) if isinstance(layout, BlockLayout) else layout.nnz
        floor = c["element_floor"] * (1 / out_features + 1 / in_features) * 1024
        costs["element"] = c["element_per_density"] * nnz / (out_features * in_features) + floor
    if "block" in found:
        blocks = layout if isinstance(layout, BlockLayout) else blocks
        costs["block"] = c["block_per_density"] * blocks.density
    return costs


def choose_format(layout, device, dtype, *, blocks: BlockLayout | None = None) -> str:
    """The cheapest candidate format for ``layout`` (ties: the earlier of dense, block, element)."""
    costs = estimate_costs(layout, device, dtype, blocks=blocks)
    return min(costs, key=lambda f: (costs[f], RUN_FORMATS.index(f)))


def layout_for(format: str, layout, *, blocks: BlockLayout | None = None):
    """The layout ``format`` runs ``layout``'s function with (dense: ``layout`` itself).
    ``layout``: a ``BlockLayout``, an ``ElementLayout`` or a ``MaskLayout``."""
    if format == "dense":
        return layout
    if format == "block":
        if isinstance(layout, BlockLayout):
            return layout
        if blocks is None:
            raise ValueError("the block format runs an element layout only when it is whole blocks")
        return blocks
    return layout if isinstance(layout, ElementLayout) else ElementLayout.from_mask(layout.to_mask())

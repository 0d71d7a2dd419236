"""Backends of the top-k projection, registered in the automatic order, in a registry of the
same shape as the matmul's (``sparsekern.backend.Registry``), forced by argument or by
``SPARSEKERN_PROJECTION_BACKEND``; one file per backend, ``base.py`` their common class.

Each backend runs the element-mode selection in two phases, so the caller can check
many matrices before changing any (``Projector`` does):

``plan(weight, k, forced) -> plan``   read-only: finds what to keep. ``forced`` is the
    bool floor set F (kept first) or None. Backends with ``checks_finite`` reject NaN/Inf
    here, in their first read pass; for the others the caller checks.
``apply(weight, plan, block_size, with_index) -> (cutoff, nnz, block_counts, index)``   in place:
    zeroes what is not kept. ``cutoff`` is the k-th largest magnitude outside F (inf when the
    fill kept nothing); ``block_counts`` the nonzeros per block when ``block_size`` is given;
    ``index`` the nonzeros' ``(row_ptr, col_idx, col_ptr, row_idx)`` listed in the same pass,
    when asked and the backend can (else None: the caller builds it from the weight).
``floors(weight, min_per_row, min_per_col) -> (mask, count, smallest)``   the floor set F
    as a bool mask, its size and its smallest magnitude (inf when empty); read-only, and
    rejects NaN/Inf when ``checks_finite``.

Block mode needs no backend: block scores are a small grid (see ``topk_project``). Keys and
their magnitudes: ``keys.py``.
"""

from ...backend import Registry
from .base import ProjectionBackend  # noqa: F401
from .cpu import CpuProjection
from .cuda import CudaProjection
from .reference import ReferenceProjection
from .triton import TritonProjection

ENV_VAR = "SPARSEKERN_PROJECTION_BACKEND"

REGISTRY = Registry(ENV_VAR, (TritonProjection(), CudaProjection(), CpuProjection(), ReferenceProjection()))

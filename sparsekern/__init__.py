"""sparsekern: block-sparse kernels for weight-sparse networks.

Importing sparsekern compiles nothing, queries no device and does not load the
compiled extension: backends load what they need on first use.

The tree by axis: a format is a package (``dense/``, ``block/``, ``element/``; the top-k
projection is ``projection/``), an op a file in it (``ops.py``, ``function.py``,
``reference.py``; ``triton/<kernel>.py``), a backend ``<package>/backends/<name>.py`` (reference,
cpu, triton, cuda), all chosen by the one ``backend.Registry``. README.md, "Repository layout".
"""

from ._cpu_isa import cpu_isa, set_cpu_isa
from .activation import AbsTopK, GeluAbsTopK, abs_topk, gelu_abs_topk
from .backend import BackendUnavailableError
from .block import BlockLayout, SparseLinearFunction, block_sparse_linear, count_for_density
from .block.backends import available_backends, backend_names
from .element import ElementLayout, ElementSparseLinearFunction, element_sparse_linear
from .linear import sparse_linear
from .module import SparseLinear, block_norms
from .projection import ProjectionResult, projection_backends, topk_project_
from .recipe import SharkfinLR, clip_grad_rms_, linear_warmup_decay
from .schedule import DensitySchedule
from .sparsify import Projector, sparsify

__version__ = "0.1.0"

__all__ = [
    "AbsTopK",
    "BackendUnavailableError",
    "BlockLayout",
    "DensitySchedule",
    "ElementLayout",
    "ElementSparseLinearFunction",
    "GeluAbsTopK",
    "ProjectionResult",
    "Projector",
    "SparseLinear",
    "SparseLinearFunction",
    "SharkfinLR",
    "abs_topk",
    "available_backends",
    "backend_names",
    "block_norms",
    "block_sparse_linear",
    "clip_grad_rms_",
    "count_for_density",
    "cpu_isa",
    "element_sparse_linear",
    "gelu_abs_topk",
    "linear_warmup_decay",
    "projection_backends",
    "set_cpu_isa",
    "sparse_linear",
    "sparsify",
    "topk_project_",
]

"""sparsekern: block-sparse kernels for weight-sparse networks.

Importing sparsekern compiles nothing, queries no device and does not load the
compiled extension: backends load what they need on first use.
"""

from .backends import BackendUnavailableError, available_backends, backend_names
from .element import ElementLayout, ElementSparseLinearFunction, element_sparse_linear
from .function import SparseLinearFunction, block_sparse_linear
from .layout import BlockLayout, count_for_density
from .linear import sparse_linear
from .module import SparseLinear, block_norms
from .projection import ProjectionResult, projection_backends, topk_project_
from .schedule import DensitySchedule
from .sparsify import Projector, sparsify

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BlockLayout",
    "DensitySchedule",
    "ElementLayout",
    "ElementSparseLinearFunction",
    "ProjectionResult",
    "Projector",
    "SparseLinear",
    "SparseLinearFunction",
    "available_backends",
    "backend_names",
    "block_norms",
    "block_sparse_linear",
    "count_for_density",
    "element_sparse_linear",
    "projection_backends",
    "sparse_linear",
    "sparsify",
    "topk_project_",
]

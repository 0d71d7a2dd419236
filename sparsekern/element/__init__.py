"""The element format: weights sparse entry by entry (unstructured), as the published
weight-sparse transformers are after their top-k projection.

``layout.py`` (``ElementLayout``: CSR and CSC indices), ``reference.py`` (the oracle),
``ops.py`` (the three products as torch operators), ``function.py`` (autograd and
``element_sparse_linear``), ``backends/`` (one file per backend, their registry), ``triton/``
(the Triton kernels).
"""

from .function import ElementSparseLinearFunction, element_sparse_linear  # noqa: F401
from .layout import ElementLayout  # noqa: F401

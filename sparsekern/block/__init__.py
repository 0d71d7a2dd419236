"""The block format: weights sparse in blocks of 16 to 128 on a side, rectangular and partial at the edges.

``layout.py`` (``BlockLayout``: the block-row and transposed indices), ``reference.py`` (the
oracle), ``ops.py`` (the three products as torch operators), ``function.py`` (autograd and
``block_sparse_linear``), ``backends/`` (one file per backend, their registry), ``triton/``
(the Triton kernels and their launch sizes).
"""

from .function import SparseLinearFunction, block_sparse_linear  # noqa: F401
from .layout import BlockLayout, count_for_density  # noqa: F401

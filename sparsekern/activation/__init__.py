"""Activation sparsity: AbsTopK, keeping each row's k largest magnitudes (the activation of the
published weight-sparse transformers).

``abs_topk.py`` (checks, ``AbsTopKFunction``, the functional ``abs_topk``, the module
``AbsTopK``), ``gelu_abs_topk.py`` (GELU then AbsTopK in one pass: ``gelu_abs_topk``,
``GeluAbsTopK``), ``ops.py`` (their operators), ``reference.py`` (the oracle),
``backends/`` (one file per backend, their registry and contract).
"""

from .abs_topk import AbsTopK, AbsTopKFunction, abs_topk  # noqa: F401
from .gelu_abs_topk import GeluAbsTopK, GeluAbsTopKFunction, gelu_abs_topk  # noqa: F401

"""Activation sparsity: AbsTopK, keeping each row's k largest magnitudes (the activation of the
published weight-sparse transformers).

``abs_topk.py`` (checks, ``AbsTopKFunction``, the functional ``abs_topk``, the module
``AbsTopK``), ``ops.py`` (the ``sparsekern::abs_topk`` operator), ``reference.py`` (the oracle),
``backends/`` (one file per backend, their registry and contract).
"""

from .abs_topk import AbsTopK, AbsTopKFunction, abs_topk  # noqa: F401

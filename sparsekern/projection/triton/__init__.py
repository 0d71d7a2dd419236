"""Triton kernels of the top-k projection. Importing this package's modules imports triton (and
compiles nothing); ``sparsekern.projection.backends.triton`` imports them only when a projection runs.

``topk_kernels.py``: the kernels (histogram, digit pick, tie counts, write pass);
``topk_launch.py``: their launchers, ``topk_select`` and ``topk_apply``.
"""

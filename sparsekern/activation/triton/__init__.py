"""Triton kernels of the AbsTopK activation. Importing this package's kernel module imports triton
(and compiles nothing); ``sparsekern.activation.backends.triton`` imports it only when the op runs.

``abs_topk.py``: the kernel (a radix select per row and one write pass) and its launch sizes;
the launcher is the backend itself (``sparsekern/activation/backends/triton.py``).
"""

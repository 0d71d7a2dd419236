"""Triton kernels of the block format. Importing this package's kernel modules imports triton
(and compiles nothing); ``sparsekern.block.backends.triton`` imports them only when a product runs.

``bsmm_fwd.py``: the forward pass and the input gradient (one kernel, two indices);
``bsmm_dw.py``: the sampled weight gradient; ``config.py``: their launch sizes.
"""

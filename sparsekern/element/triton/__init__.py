"""Triton kernels of the element format. Importing this package's kernel modules imports
triton (and compiles nothing); ``sparsekern.element.backends.triton`` imports them only when a
product runs.

``esmm_fwd.py``: the forward pass and the input gradient (one kernel, two indices);
``esmm_dw.py``: the sampled weight gradient; ``config.py``: their launch sizes.
"""

"""Triton tooling shared by every format and op: ``config.py`` (dtype names, the TF32 rule, the
interpreter test; torch-only), ``aot.py`` and ``topk_aot.py`` (every Triton kernel compiled ahead
of time for real GPUs, without one). Importing this package imports nothing. The kernels
themselves live with their format or op: ``sparsekern/{block,element,projection}/triton/``."""

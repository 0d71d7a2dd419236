"""The dense format: ``F.linear`` on the weight masked by a layout (either sparse format's), for
the layers where the sparse kernels would cost more than dense. ``function.py``: the autograd
Function and ``masked_dense_linear``; ``layout.py``: ``MaskLayout``, entries known by their mask
only (no index built). Pure torch: no backends, no kernels of its own."""

from .function import MaskedLinearFunction, masked_dense_linear  # noqa: F401
from .layout import MaskLayout  # noqa: F401

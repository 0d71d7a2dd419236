"""Backends of AbsTopK (``sparsekern.abs_topk``), registered fastest first (the automatic order),
chosen and forced by ``sparsekern.backend.Registry`` with the same names and the same
``SPARSEKERN_BACKEND`` as the matmul's; one file per backend.

The contract every AbsTopK backend implements (``Backend`` subclasses declaring ``name``,
``devices`` and ``dtypes``, and ``unavailable_reason`` / ``device_reason`` where they need
to; block sides do not apply):

``forward(x2d[rows, n], k) -> (values[rows, n], kept[rows, n])``
    ``x2d`` is contiguous and 2-D (rows may be 0, n may be 0), of a dtype the backend
    declares; ``0 <= k <= n`` (checked by the caller). ``kept`` (bool) marks each row's ``k``
    entries of largest magnitude, where every NaN is larger than every number, then +-Inf,
    then finite entries by ``|x|`` (-0 and +0 equal), and ties go to the lowest index;
    ``values`` (x2d's dtype) holds x2d's kept entries bit for bit and +0 everywhere else. Both
    are new tensors on x2d's device (never x2d itself, even for ``k == n``), every entry
    written. ``reference.py`` is the oracle: a backend's outputs must equal its exactly.
``backward(grad[rows, n], kept) -> grad where kept, +0 elsewhere`` (optional; else ``torch.where``)
    A faster pass for the first-order backward, bit for bit ``torch.where``'s result.
``gelu_forward(x2d, k, approximate) -> (values, kept)`` (optional; else ``forward(F.gelu(x2d), k)``)
    ``forward`` of ``F.gelu(x2d, approximate=approximate)`` in one pass, the same bit for bit
    (float64: within the last bit of the GELU, which torch's own kernel does not hold fixed).
``gelu_backward(grad, x2d, kept, approximate) -> where(kept, gelu_backward(grad, x2d), 0)`` (optional)
    ``reference.gelu_abs_topk_backward``'s result, as exactly (but for the last bit where torch's
    own GELU derivative varies between its vector loop and its tails: float64, and float32's tanh
    form with AVX-512).
"""

from ...backend import ENV_VAR, Registry
from .cpu import AbsTopKCpuBackend
from .cuda import AbsTopKCudaBackend
from .reference import AbsTopKReferenceBackend
from .triton import AbsTopKTritonBackend

REGISTRY = Registry(ENV_VAR, (
    # GPU backends go first here, fastest first ("cuda", then "triton": backends/cuda.py and
    # backends/triton.py, implementing the contract above).
    AbsTopKCudaBackend(), AbsTopKTritonBackend(),
    AbsTopKCpuBackend(),
    AbsTopKReferenceBackend(),
))

select = REGISTRY.select
get_backend = REGISTRY.get
available_backends = REGISTRY.available

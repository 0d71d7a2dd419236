"""Backends, registered fastest first: the order an automatic choice tries them."""

from .base import (  # noqa: F401
    ENV_VAR,
    Backend,
    BackendUnavailableError,
    available_backends,
    backend_names,
    get_backend,
    register,
    select,
)
from .cpu import CpuBackend
from .cuda import CudaBackend
from .reference import ReferenceBackend
from .triton import TritonBackend

register(CudaBackend())
register(TritonBackend())
register(CpuBackend())
register(ReferenceBackend())

"""Output allocation for the launchers, with a poison switch for the tests.

Under ``poisoned_outputs()`` every kernel output starts as NaN instead of
uninitialised memory, so an element a kernel forgets to write shows in the result.
"""

import contextlib

import torch

_POISON = False


def new_output(shape, dtype, device) -> torch.Tensor:
    if _POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def poisoned_output_or_none(shape, like: torch.Tensor):
    """For kernels that allocate their own output: a NaN-filled ``out`` under the poison
    switch, else None (the kernel allocates)."""
    return new_output(shape, like.dtype, like.device) if _POISON else None


@contextlib.contextmanager
def poisoned_outputs():
    global _POISON
    previous, _POISON = _POISON, True
    try:
        yield
    finally:
        _POISON = previous

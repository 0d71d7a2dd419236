"""Magnitude keys of the fused top-k backends (cpu, triton, cuda): an entry's key is the bit
pattern of ``|w|`` as an int (monotone in ``|w|`` for non-negative floats); floor entries get
``FORCED_KEY``, above every finite magnitude. The backends report their cutoff as a key;
``key_to_magnitude`` turns it back into a magnitude."""

from __future__ import annotations

import torch

# Keys are |w|'s bits; floor entries get the largest key, above every finite magnitude.
FORCED_KEY = {torch.float32: 0x7FFFFFFF, torch.float16: 0x7FFF, torch.bfloat16: 0x7FFF}
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def key_to_magnitude(key: int, dtype: torch.dtype) -> float:
    """The magnitude whose bit pattern is ``key``; inf for the floor key and above."""
    if key >= FORCED_KEY[dtype]:
        return float("inf")
    return torch.tensor([key], dtype=_BITS[dtype]).view(dtype).item()

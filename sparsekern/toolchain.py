"""What the ahead-of-time checks of the Triton kernels (``triton/aot.py``), of the CUDA C++ kernels
(``cuda_static.py``) and ``sparsekern-bench --static`` (``bench/static.py``) share: reading
``ptxas -v`` and saying that a source of kernels has nothing to report here. Standard library
only, imports nothing of sparsekern (so none of those modules imports another to get these).
"""

from __future__ import annotations

import re


class Unavailable(Exception):
    """A source of kernel figures has nothing to report here (no compiler, no sources, no
    triton); the message says why. ``sparsekern-bench --static`` reports it and goes on."""


def parse_ptxas(report: str) -> list[dict]:
    """Per entry point: mangled name, stack, spill stores/loads, registers, shared bytes."""
    entries = []
    for block in re.split(r"(?=ptxas info\s+: Compiling entry function)", report)[1:]:
        name = re.search(r"Compiling entry function '(\S+)'", block).group(1)
        stack, stores, loads = map(int, re.search(
            r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block).groups())
        registers = int(re.search(r"Used (\d+) registers", block).group(1))
        shared = re.search(r"(\d+) bytes smem", block)
        entries.append(dict(name=name, stack=stack, spill_stores=stores, spill_loads=loads,
                            registers=registers, shared_bytes=int(shared.group(1)) if shared else 0))
    return entries

"""The instruction set of the CPU kernels, one choice for every format's "cpu" backend (block,
element) and the projection's: the extension holds each kernel compiled for portable, AVX2 + FMA,
AVX-512 and (bf16 block products) AMX code and runs the best one the CPU and OS offer;
``set_cpu_isa`` (or ``SPARSEKERN_CPU_ISA``, read on first use) picks a lesser one.
Public as ``sparsekern.cpu_isa`` and ``sparsekern.set_cpu_isa``. Loads the extension on first
call, never at import."""

from ._extension import extension, unavailable_reason

_SWITCHES = ("cpu_isa", "set_cpu_isa", "cpu_bf16_on_tiles")


def cpu_extension():
    """The compiled extension, for the CPU kernels' run-time switches; RuntimeError when it is unavailable."""
    why = unavailable_reason(*_SWITCHES)
    if why:
        raise RuntimeError(f"the cpu backend is unavailable: {why}")
    return extension()


def cpu_isa() -> str:
    """The instruction set the CPU kernels use now: 'portable', 'avx2', 'avx512' or 'amx'."""
    return cpu_extension().cpu_isa()


def set_cpu_isa(name: str) -> str:
    """Use the kernels built for ``name`` ('portable', 'avx2', 'avx512', 'amx'); returns the previous one.

    Raises ValueError for an unknown name or one this CPU does not support.
    """
    return cpu_extension().set_cpu_isa(name)

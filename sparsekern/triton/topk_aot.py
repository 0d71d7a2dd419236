"""Ahead-of-time compilation of the top-k projection kernels for sm_80 and sm_90, without a GPU.

The same method as ``aot.py`` beside it (whose compile helper it reuses): every kernel,
for each dtype, with and without a floor mask, compiled with ``triton.compile`` for a
``GPUTarget``; ``ptxas -v`` gives registers and spills. Cannot run under
``TRITON_INTERPRET=1``: ``report_in_subprocess`` runs ``python -m sparsekern.triton.topk_aot``.
The kernels and their launchers: ``sparsekern/projection/triton/``.
"""

from __future__ import annotations

import json
import sys

import torch

from .aot import ARCHS, compile_for_gpu
from .aot import report_in_subprocess as _report_in_subprocess
from .config import TRITON_DTYPES

_POINTERS = {"hist_ptr": "*i64", "ties_ptr": "*i32", "counts_ptr": "*i32", "state_ptr": "*i64",
             "ties_before_ptr": "*i64", "nnz_ptr": "*i64", "forced_ptr": "*i1"}


def _kernels():
    from ..projection.triton.topk_kernels import (_topk_apply_kernel, _topk_hist_kernel, _topk_pick_kernel,
                                                  _topk_ties_kernel)

    return {
        "topk_hist": (_topk_hist_kernel, dict(SHIFT=8, FIRST=False)),
        "topk_pick": (_topk_pick_kernel, {}),
        "topk_ties": (_topk_ties_kernel, {}),
        "topk_apply": (_topk_apply_kernel, dict(COUNT_BLOCKS=True, BLOCK_OUT=32, BLOCK_IN=32)),
    }


def compile_kernel(name: str, arch: int, dtype: torch.dtype, has_forced: bool) -> dict:
    # The launcher's constants, so that the check matches it.
    from ..projection.triton.topk_launch import _KEY_BITS, MAX_BLOCK_C

    fn, extra = _kernels()[name]
    constexprs = dict(extra)
    if "HAS_FORCED" in fn.arg_names:
        constexprs.update(HAS_FORCED=has_forced, KEY_BITS=_KEY_BITS[dtype], BLOCK_C=MAX_BLOCK_C)
    _, registers, spills = compile_for_gpu(
        fn, arch, constexprs, lambda arg: _POINTERS.get(arg, f"*{TRITON_DTYPES[dtype]}"),
        unit_strides=("stride_c",), sizes_divisible=False, options={"num_warps": 4},
    )
    return dict(kernel=name, arch=arch, dtype=TRITON_DTYPES[dtype], has_forced=has_forced,
                registers=registers, spill_bytes=spills)


def default_cases():
    for arch in ARCHS:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for name in _kernels():
                for has_forced in ((False, True) if name != "topk_pick" else (False,)):
                    yield name, arch, dtype, has_forced


def report_in_subprocess(timeout: float = 900) -> list[dict]:
    return _report_in_subprocess(timeout, module="sparsekern.triton.topk_aot")


if __name__ == "__main__":
    json.dump([compile_kernel(*case) for case in default_cases()], sys.stdout)

"""``sparsekern-bench --static``: resource use of every GPU kernel, compiled ahead of time.

No GPU needed. Each provider returns rows of ``kernel, arch, dtype, block_size, tf32,
registers, spill_bytes, shared_bytes, tensor_core`` or raises ``Unavailable`` with the
reason it has nothing to report:

* Triton: ``sparsekern.triton.aot`` (the matmul kernels) and ``sparsekern.triton.topk_aot``
  (the top-k kernels), each in a subprocess without ``TRITON_INTERPRET``;
* CUDA C++: ``sparsekern.cuda_static.static_report()`` (ptxas figures of the ``.cu``
  kernels; it raises ``Unavailable`` without nvcc or the sources).

A new source of kernels adds a function to ``PROVIDERS``.
"""

from __future__ import annotations

import importlib.util

from ..toolchain import Unavailable


def triton_rows() -> list[dict]:
    if importlib.util.find_spec("triton") is None:
        raise Unavailable("Triton kernels: the triton package is not installed")
    from ..triton.aot import report_in_subprocess

    return [{"source": "triton", **row} for row in report_in_subprocess()]


def topk_rows() -> list[dict]:
    """The projection's Triton top-k kernels (no matmul: no tensor cores, no block size)."""
    if importlib.util.find_spec("triton") is None:
        raise Unavailable("Triton top-k kernels: the triton package is not installed")
    from ..triton.topk_aot import report_in_subprocess

    rows = []
    for row in report_in_subprocess():
        kernel = row["kernel"] + (" (floors)" if row.get("has_forced") else "")
        rows.append({"source": "triton", "block_size": "-", "tf32": False, "shared_bytes": row.get("shared_bytes"),
                     "tensor_core": "none", **row, "kernel": f"projection/{kernel}"})
    return rows


def cuda_rows() -> list[dict]:
    from ..cuda_static import static_report

    return [{"source": "cuda", **row} for row in static_report()]


PROVIDERS = {"triton": triton_rows, "triton-topk": topk_rows, "cuda": cuda_rows}


def collect(providers=None) -> tuple[list[dict], list[str]]:
    """All rows, and one message per provider that had none."""
    rows, messages = [], []
    for name, provider in (providers or PROVIDERS).items():
        try:
            rows += provider()
        except Unavailable as why:
            messages.append(str(why))
    return rows, messages


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def table(rows: list[dict]) -> str:
    from .report import _table

    header = ["source", "kernel", "arch", "dtype", "block", "tf32", "registers", "spill B", "shared B", "tensor core"]
    lines = []
    for r in rows:
        arch = r["arch"]
        sm = arch if isinstance(arch, str) else f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        block = r["block_size"]
        block = f"{block[0]}x{block[1]}" if isinstance(block, (list, tuple)) else _or_dash(block)
        lines.append([r["source"], r["kernel"], sm, r["dtype"], block, "yes" if r.get("tf32") else "no",
                      str(r["registers"]), str(r["spill_bytes"]), _or_dash(r.get("shared_bytes")),
                      r.get("tensor_core") or "-"])
    return _table(header, lines, right={6, 7, 8})

"""Resource use of the CUDA C++ kernels (csrc/cuda), from ptxas, without a GPU.

``static_report()`` compiles each kernel source for sm_80 and sm_90a (``nvcc -ptx``, then
``ptxas -v``) and returns one row per kernel variant: registers, spill bytes, shared memory
and the tensor-core instruction it uses, the element format's (``ELEMENT_SOURCES``) and the
top-k projection's kernels (``TOPK_SOURCES``) included. ``sparsekern-bench --static`` prints these rows; tests/test_cuda_build.py and
tests/test_projection_cuda_build.py assert on them (no spills; mma.sync where expected).

Compiling takes about a minute on a small machine, so results are cached in the temporary
directory, keyed by the sources, the compiler version and the flags. Nothing happens at import.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .toolchain import Unavailable, parse_ptxas

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
# Kernel sources and the number of variants (entry points) each instantiates.
SOURCES = {"bsmm_fwd.cu": 24, "bsmm_dw.cu": 12}
# The element format's kernels (CUDA-core FMAs, no tensor cores): per source, 6 variants
# (fp32/fp16/bf16 x int32/int64 pointers) of each of its two kernels.
ELEMENT_SOURCES = {"esmm_fwd.cu": 12, "esmm_dw.cu": 12}
# The top-k projection's kernels (no tensor cores; 32-bit keys for fp32, 16-bit for fp16/bf16).
TOPK_SOURCES = {"topk_select.cu": 7, "topk_apply.cu": 2}
ARCHS = {80: "sm_80", 90: "sm_90a"}
# Same standard and optimisation level as the extension build (setup.py, torch's nvcc flags).
NVCC_FLAGS = ("-std=c++20", "-O3")
# Kernel template argument Mode (csrc/cuda/tile.cuh) as it appears in mangled names:
# dtype, TF32, the tensor-core instruction, and what the PTX of such a kernel must contain.
MODES = {
    "0": ("bf16", False, "mma.sync m16n8k16",
          ["mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", "ldmatrix.sync.aligned.m8n8.x4"]),
    "1": ("fp16", False, "mma.sync m16n8k16",
          ["mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", "ldmatrix.sync.aligned.m8n8.x4"]),
    "2": ("fp32", True, "mma.sync m16n8k8 tf32",
          ["mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", "cvt.rna.tf32.f32"]),
    "3": ("fp32", False, "none (fp32 FMA)", []),
}


def nvcc() -> str | None:
    return shutil.which("nvcc")


def _ptxas() -> str:
    return shutil.which("ptxas") or str(Path(nvcc()).with_name("ptxas"))


def _cache_dir() -> Path:
    digest = hashlib.sha256()
    for path in sorted(CUDA_DIR.glob("*")) + sorted((ROOT / "csrc" / "common").glob("*")):
        digest.update(path.name.encode() + path.read_bytes())
    version = subprocess.run([nvcc(), "--version"], capture_output=True, text=True).stdout
    digest.update(version.encode() + " ".join(NVCC_FLAGS).encode())
    return Path(tempfile.gettempdir()) / f"sparsekern-cuda-static-{digest.hexdigest()[:16]}"


def compile_source(source: str, arch: int) -> tuple[str, str]:
    """(PTX, ptxas -v report) of one kernel source for one arch (80 or 90), cached."""
    if nvcc() is None:
        raise Unavailable("CUDA C++ kernels: nvcc not found")
    if not (CUDA_DIR / source).is_file():
        raise Unavailable(f"CUDA C++ kernels: {CUDA_DIR / source} not found (an installed wheel has no sources)")
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sm = ARCHS[arch]
    ptx, report = cache / f"{source}.{sm}.ptx", cache / f"{source}.{sm}.ptxas"
    if not report.is_file():
        # Written under names of this process's own and renamed into place: concurrent test
        # runs share the cache and must never see a half-written file.
        fd, tmp_name = tempfile.mkstemp(dir=cache, suffix=".ptx")
        os.close(fd)
        tmp_ptx = Path(tmp_name)
        try:
            _run([nvcc(), *NVCC_FLAGS, f"-arch={sm.replace('sm_', 'compute_')}", "-ptx",
                  str(CUDA_DIR / source), "-o", str(tmp_ptx)])
            done = _run([_ptxas(), f"-arch={sm}", "-v", str(tmp_ptx), "-o", "/dev/null"])
            tmp_report = tmp_ptx.with_suffix(".ptxas")
            tmp_report.write_text(done.stdout + done.stderr)
            tmp_ptx.replace(ptx)
            tmp_report.replace(report)
        finally:
            tmp_ptx.unlink(missing_ok=True)
    return ptx.read_text(), report.read_text()


def _run(command: list[str]) -> subprocess.CompletedProcess:
    """Run a compiler; on failure raise with its own error messages."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}):\n{done.stderr or done.stdout}")
    return done


def describe(mangled: str) -> dict:
    """Kernel, mode and tile of a mangled entry name of csrc/cuda."""
    if "bsmm_fwd_kernel" in mangled:
        m = re.search(r"ModeE(\d)ELi(\d+)ELb([01])E", mangled)
        mode, tn, kcontig = m.group(1), int(m.group(2)), m.group(3) == "1"
        kernel = "bsmm_fwd " + ("(forward: W k-contiguous)" if kcontig else "(input grad: W n-contiguous)")
        return dict(kernel=kernel, mode=mode, tile=(64, tn))
    m = re.search(r"bsmm_dw_kernelILNS0_4ModeE(\d)ELi(\d+)E", mangled)
    return dict(kernel="bsmm_dw", mode=m.group(1), tile=(int(m.group(2)), int(m.group(2))))


_ELEMENT_DTYPES = {"f": "fp32", "6__half": "fp16", "13__nv_bfloat16": "bf16"}


def describe_element(mangled: str) -> dict:
    """Kernel, dtype and pointer width of a mangled entry name of csrc/cuda/esmm_*."""
    m = re.search(r"(esmm_[a-z]+)_kernelI(f|6__half|13__nv_bfloat16)([il])E", mangled)
    return dict(kernel=m.group(1), dtype=_ELEMENT_DTYPES[m.group(2)], pointers="int64" if m.group(3) == "l" else "int32")


def describe_topk(mangled: str) -> dict:
    """Kernel and dtypes of a mangled entry name of csrc/cuda/topk_*: templates over the key
    bits (uint32_t: fp32; uint16_t: fp16 and bf16), or none (one-CTA bookkeeping kernels)."""
    kernel = re.search(r"(topk_[a-z]+)_kernel", mangled).group(1)
    keys = re.search(r"_kernelI([jt])E", mangled)
    dtype = "-" if keys is None else ("fp32" if keys.group(1) == "j" else "fp16/bf16")
    return dict(kernel=kernel, dtype=dtype)


def ptx_bodies(ptx: str) -> dict[str, str]:
    """Mangled entry name -> its PTX."""
    bodies = re.split(r"\.visible \.entry ", ptx)[1:]
    return {body.split("(", 1)[0]: body for body in bodies}


def static_report() -> list[dict]:
    """One row per kernel variant and arch, in the bench's static-report format; the tile
    (CTA output tile, not the block: each block side maps onto tiles of at most 64) stands in
    the block_size column."""
    rows = []
    for source in SOURCES:
        for arch in ARCHS:
            _, report = compile_source(source, arch)
            for entry in parse_ptxas(report):
                info = describe(entry["name"])
                dtype, tf32, instruction, _ = MODES[info["mode"]]
                rows.append(dict(kernel=info["kernel"], arch=arch, dtype=dtype, block_size=list(info["tile"]),
                                 tf32=tf32, registers=entry["registers"],
                                 spill_bytes=entry["spill_stores"] + entry["spill_loads"] + entry["stack"],
                                 shared_bytes=entry["shared_bytes"], tensor_core=instruction))
    for source in ELEMENT_SOURCES:
        for arch in ARCHS:
            for entry in parse_ptxas(compile_source(source, arch)[1]):
                info = describe_element(entry["name"])
                rows.append(dict(kernel=f"element/{info['kernel']} ({info['pointers']} pointers)", arch=arch,
                                 dtype=info["dtype"], block_size="-", tf32=False, registers=entry["registers"],
                                 spill_bytes=entry["spill_stores"] + entry["spill_loads"] + entry["stack"],
                                 shared_bytes=entry["shared_bytes"], tensor_core="none (fp32 FMA)"))
    for source in TOPK_SOURCES:
        for arch in ARCHS:
            for entry in parse_ptxas(compile_source(source, arch)[1]):
                info = describe_topk(entry["name"])
                rows.append(dict(kernel=f"projection/{info['kernel']}", arch=arch, dtype=info["dtype"],
                                 block_size="-", tf32=False, registers=entry["registers"],
                                 spill_bytes=entry["spill_stores"] + entry["spill_loads"] + entry["stack"],
                                 shared_bytes=entry["shared_bytes"], tensor_core="none"))
    return rows

"""Ahead-of-time compilation of the Triton kernels for real GPUs, without one.

``triton.compile`` with a ``GPUTarget`` gives PTX and a cubin on any machine; ``ptxas -v``
then reports registers and spills. The tests use this so CI fails when a kernel stops
compiling for real hardware; ``sparsekern-bench --static`` prints the same figures.

It cannot run under ``TRITON_INTERPRET=1`` (the interpreter patches ``triton.language``):
call ``report_in_subprocess`` from such a process. Run as a module for a JSON report:
``python -m sparsekern.triton.aot``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from ..toolchain import parse_ptxas
from .config import TRITON_DTYPES, interpreting

ARCHS = (80, 90)  # sm_80 (A100: mma.sync), sm_90a (H100: wgmma)


@dataclasses.dataclass
class AotReport:
    kernel: str
    arch: int
    dtype: str
    block_size: tuple | None  # None: an element kernel (no blocks)
    tf32: bool
    registers: int
    spill_bytes: int
    shared_bytes: int
    tensor_core: str  # "wgmma", "mma.sync" or "none"


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """How to compile one kernel: the jit function, its int32 index pointers, the stride arguments
    that are 1 in the common (contiguous) case, and its constexprs and launch config as functions
    of ``block`` (a ``(block_out, block_in)`` tuple, or None for kernels without blocks), tf32 and
    dtype, built by the launchers' own config functions."""

    fn: object
    index_ptrs: tuple
    unit_strides: tuple
    constexprs: object  # (block, tf32, cfg) -> dict
    config: object  # (block, dtype) -> dict
    other_ptrs: tuple = ()  # (argument, Triton type) of pointers neither index nor operand (a bool output)


# Block-format kernels: tensor cores (tl.dot), one instantiation per block size.
BLOCK_KERNELS = ("bsmm_fwd/forward", "bsmm_fwd/grad_input", "bsmm_dw/grad_weight")
# Element-format kernels: CUDA-core gathers and FMAs, no block size, no TF32.
ELEMENT_KERNELS = ("esmm_fwd/forward", "esmm_fwd/grad_input", "esmm_dw/grad_weight")
# Activation kernels (sparsekern/activation/triton/): CUDA-core radix selects, no block size, no
# TF32; the row held in registers (rows up to MAX_ONE_CHUNK) and the row walked in blocks.
ACTIVATION_KERNELS = ("abs_topk/one_chunk", "abs_topk/loop")
KERNEL_NAMES = BLOCK_KERNELS + ELEMENT_KERNELS + ACTIVATION_KERNELS


def _kernel_specs() -> dict[str, KernelSpec]:
    from ..block.triton.bsmm_dw import _bsmm_dw_kernel
    from ..block.triton.bsmm_fwd import _bsmm_fwd_kernel
    from ..activation.triton.abs_topk import MAX_ONE_CHUNK, _abs_topk_kernel, abs_topk_config
    from ..block.triton.config import bsmm_dw_config, bsmm_fwd_config
    from ..element.triton.config import esmm_dw_config, esmm_fwd_config
    from ..element.triton.esmm_dw import _esmm_dw_kernel
    from ..element.triton.esmm_fwd import _esmm_fwd_kernel

    def fwd_constexprs(bk, bn, tf32, cfg):
        return dict(HAS_BIAS=True, ALLOW_TF32=tf32, BLOCK_M=cfg["BLOCK_M"], BLOCK_K=bk, BLOCK_N=bn)

    def tiles(cfg, *names):
        return {name: cfg[name] for name in names}

    esmm_fwd_tiles = ("BLOCK_M", "BLOCK_N", "BLOCK_NZ")
    abs_topk_tiles = ("KEY_BITS", "BLOCK_N", "ONE_CHUNK")
    return {
        # forward: a = x (unit stride along K), b = weight.T (unit stride along K)
        "bsmm_fwd/forward": KernelSpec(
            _bsmm_fwd_kernel, ("ptr_ptr", "idx_ptr"), ("stride_ak", "stride_bk", "stride_on"),
            lambda block, tf32, cfg: fwd_constexprs(block[1], block[0], tf32, cfg),
            lambda block, dtype: bsmm_fwd_config(block[1], block[0], dtype)),
        # input gradient: a = grad_out, b = weight (unit stride along N), transposed index
        "bsmm_fwd/grad_input": KernelSpec(
            _bsmm_fwd_kernel, ("ptr_ptr", "idx_ptr"), ("stride_ak", "stride_bn", "stride_on"),
            lambda block, tf32, cfg: {**fwd_constexprs(*block, tf32, cfg), "HAS_BIAS": False},
            lambda block, dtype: bsmm_fwd_config(*block, dtype)),
        "bsmm_dw/grad_weight": KernelSpec(
            _bsmm_dw_kernel, ("row_ptr", "col_ptr"), ("stride_gn", "stride_xk", "stride_wk"),
            lambda block, tf32, cfg: dict(ALLOW_TF32=tf32, BLOCK_M=cfg["BLOCK_M"], BLOCK_OUT=block[0],
                                          BLOCK_IN=block[1]),
            lambda block, dtype: bsmm_dw_config(*block, dtype)),
        # forward: a.T = x.T made contiguous, s = weight (unit stride along its inputs), row-major index
        "esmm_fwd/forward": KernelSpec(
            _esmm_fwd_kernel, ("ptr_ptr", "idx_ptr"), ("stride_am", "stride_sr", "stride_of"),
            lambda block, tf32, cfg: dict(HAS_BIAS=True, **tiles(cfg, *esmm_fwd_tiles)),
            lambda block, dtype: esmm_fwd_config(dtype)),
        # input gradient: a.T = grad_out.T, s = weight.T (unit stride along its features), column-major index
        "esmm_fwd/grad_input": KernelSpec(
            _esmm_fwd_kernel, ("ptr_ptr", "idx_ptr"), ("stride_am", "stride_sf", "stride_of"),
            lambda block, tf32, cfg: dict(HAS_BIAS=False, **tiles(cfg, *esmm_fwd_tiles)),
            lambda block, dtype: esmm_fwd_config(dtype)),
        "esmm_dw/grad_weight": KernelSpec(
            _esmm_dw_kernel, ("ptr_ptr", "idx_ptr"), ("stride_gm", "stride_xm", "stride_wk"),
            lambda block, tf32, cfg: tiles(cfg, "BLOCK_M", "BLOCK_NZ"),
            lambda block, dtype: esmm_dw_config(dtype)),
        # The launcher's configs at the longest row held in registers, and just past it (the loop).
        "abs_topk/one_chunk": KernelSpec(
            _abs_topk_kernel, (), (), lambda block, tf32, cfg: tiles(cfg, *abs_topk_tiles),
            lambda block, dtype: abs_topk_config(MAX_ONE_CHUNK, dtype), other_ptrs=(("kept_ptr", "*i1"),)),
        "abs_topk/loop": KernelSpec(
            _abs_topk_kernel, (), (), lambda block, tf32, cfg: tiles(cfg, *abs_topk_tiles),
            lambda block, dtype: abs_topk_config(MAX_ONE_CHUNK + 1, dtype), other_ptrs=(("kept_ptr", "*i1"),)),
    }


def _ptxas() -> str:
    import triton.backends.nvidia as nvidia

    bundled = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    found = bundled if os.path.exists(bundled) else shutil.which("ptxas")
    if not found:
        raise RuntimeError("ptxas not found (neither triton's bundled copy nor on PATH)")
    return found


def compile_for_gpu(fn, arch: int, constexprs: dict, pointer_type, *, unit_strides=(), sizes_divisible=True,
                    options=None):
    """``triton.compile`` one JIT function for ``sm_<arch>`` without a GPU.

    ``pointer_type(arg)`` gives each ``*_ptr`` argument's Triton type; ``unit_strides`` become
    the constexpr 1 and pointers get 16-byte alignment, as the JIT specialises contiguous
    tensors; ``sizes_divisible`` marks the other ints multiples of 16 (the common case).
    Returns ``(compiled kernel, registers, spill bytes)``; ptxas -v gives the last two.
    """
    if interpreting():
        raise RuntimeError("ahead-of-time compilation needs a process without TRITON_INTERPRET=1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in unit_strides:
            signature[arg] = "constexpr"
            constexprs[arg] = 1
        elif arg.endswith("_ptr"):
            signature[arg] = pointer_type(arg)
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "i32"
            if sizes_divisible:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options or {})
    registers, spills = _ptxas_usage(compiled.asm["ptx"], arch)
    return compiled, registers, spills


def compile_kernel(name: str, arch: int, dtype: torch.dtype, block_size=None, tf32: bool = False) -> AotReport:
    """Compile one matmul kernel instantiation for ``sm_<arch>`` and read its resource use
    (``block_size``: the block kernels' ``(block_out, block_in)``; None for the element and activation kernels)."""
    spec = _kernel_specs()[name]
    block = tuple(block_size) if block_size is not None else None
    cfg = spec.config(block, dtype)
    ty = TRITON_DTYPES[dtype]
    other = dict(spec.other_ptrs)
    compiled, registers, spills = compile_for_gpu(
        spec.fn, arch, spec.constexprs(block, tf32, cfg),
        lambda arg: other.get(arg) or ("*i32" if arg in spec.index_ptrs else f"*{ty}"),
        unit_strides=spec.unit_strides, options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]},
    )
    ptx = compiled.asm["ptx"]
    tensor_core = "wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
    return AotReport(name, arch, ty, block, tf32, registers, spills, compiled.metadata.shared, tensor_core)


def expected_tensor_core(kernel: str, arch: int, dtype: str, block_size, tf32: bool) -> str:
    """The tensor-core instruction a kernel's PTX must hold: none for the element and activation
    kernels (CUDA cores) and for IEEE fp32; mma.sync on sm_80; on sm_90a wgmma, which needs 64 rows per
    warpgroup: the forward tiles have BLOCK_M=64, the weight-gradient tile is one weight block
    (so blocks of 64+ rows)."""
    if kernel in ELEMENT_KERNELS or kernel in ACTIVATION_KERNELS or (dtype == "fp32" and not tf32):
        return "none"
    if arch == 80:
        return "mma.sync"
    return "wgmma" if kernel.startswith("bsmm_fwd") or block_size[0] >= 64 else "mma.sync"


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int]:
    sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([_ptxas(), f"-arch={sm}", "-v", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True, check=True)
    (entry,) = parse_ptxas(out.stdout + out.stderr)  # one kernel per PTX
    return entry["registers"], entry["spill_stores"] + entry["spill_loads"]


def default_cases():
    """The instantiations checked by the tests and shown by ``sparsekern-bench --static``:
    ``(kernel, arch, dtype, block_size, tf32)``, block_size None for the element and activation kernels."""
    for arch in ARCHS:
        for dtype in (torch.float16, torch.bfloat16):
            for block in ((16, 16), (32, 32), (64, 64), (128, 128), (32, 64)):
                for name in BLOCK_KERNELS:
                    yield name, arch, dtype, block, False
        for name in BLOCK_KERNELS:
            yield name, arch, torch.float32, (32, 32), True
            yield name, arch, torch.float32, (32, 32), False
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for name in ELEMENT_KERNELS + ACTIVATION_KERNELS:
                yield name, arch, dtype, None, False


def report_in_subprocess(timeout: float = 900, module: str = "sparsekern.triton.aot") -> list[dict]:
    """Run ``python -m <module>`` (it prints a JSON list) in a fresh interpreter without
    TRITON_INTERPRET; by default this module's ``default_cases``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"ahead-of-time compilation failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout)


def main() -> None:
    reports = [dataclasses.asdict(compile_kernel(*case)) for case in default_cases()]
    json.dump(reports, sys.stdout)


if __name__ == "__main__":
    main()

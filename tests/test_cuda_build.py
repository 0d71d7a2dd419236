"""The CUDA kernels without a GPU: they compile for sm_80 and sm_90a with no register
spills and with tensor-core instructions in every tensor-core variant; their fragment index
math matches the PTX ISA tables; the kernels themselves, compiled for the host and run on an
emulation of the CUDA execution model (tests/cuda_host/), match a double reference; and the
built extension exposes them.

Nothing here touches a GPU: tests/test_gpu.py and tests/test_cuda_gpu.py run the kernels on
one, and skip without it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsekern
from sparsekern import cuda_static, toolchain
from sparsekern.backend import BackendUnavailableError
from sparsekern.block.backends import get_backend, select

ROOT = Path(__file__).resolve().parents[1]


def _nvcc():
    return cuda_static.nvcc()


needs_nvcc = pytest.mark.skipif(_nvcc() is None, reason="nvcc not found: the CUDA kernels cannot be compiled here")
ARCHS = sorted(cuda_static.ARCHS)
ALL_SOURCES = {**cuda_static.SOURCES, **cuda_static.ELEMENT_SOURCES, **cuda_static.TOPK_SOURCES}


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(ALL_SOURCES))
def test_no_spills(source, arch):
    # Every CUDA source, matmul (both formats) and projection: one nvcc -ptx and one ptxas -v
    # per (source, arch), with the build's flags; cached.
    entries = toolchain.parse_ptxas(cuda_static.compile_source(source, arch)[1])
    expected = ALL_SOURCES[source]
    assert len(entries) == expected, f"expected {expected} kernels, ptxas compiled {len(entries)}"
    spilling = [e for e in entries if e["stack"] or e["spill_stores"] or e["spill_loads"]]
    assert not spilling, f"kernels with a stack frame or spills on sm_{arch}: {spilling}"


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(cuda_static.SOURCES))
def test_tensor_core_instructions(source, arch):
    bodies = cuda_static.ptx_bodies(cuda_static.compile_source(source, arch)[0])
    assert len(bodies) == cuda_static.SOURCES[source]
    for name, body in bodies.items():
        mode = cuda_static.describe(name)["mode"]
        for instruction in cuda_static.MODES[mode][3]:
            assert instruction in body, f"{name}: no {instruction}"
        assert "cp.async.cg.shared.global" in body and "cp.async.wait_group" in body, f"{name}: no cp.async pipeline"
        if mode == "3":
            assert "mma.sync" not in body, f"{name}: the plain fp32 kernel must not round through tensor cores"


def _cxx():
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _cuda_include():
    """A directory with cuda_fp16.h / cuda_bf16.h: the toolkit's, else the pip CUDA headers."""
    candidates = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    if _nvcc():
        candidates.append(str(Path(_nvcc()).resolve().parents[1]))
    candidates = [str(Path(c) / "include") for c in candidates if c]
    major = (torch.version.cuda or "").split(".")[0]
    candidates += [str(Path(p) / f"cu{major}" / "include") for p in _nvidia_paths()]
    return next((c for c in candidates if (Path(c) / "cuda_fp16.h").is_file()), None)


def _nvidia_paths():
    try:
        import nvidia
    except ImportError:
        return []
    return list(nvidia.__path__)


def _build_host_program(source: str, exe: Path, *flags: str) -> None:
    if _cxx() is None:
        pytest.skip("no C++ compiler found to build the host replay of the CUDA kernels")
    result = subprocess.run([_cxx(), "-std=c++20", *flags, str(ROOT / "tests" / "cuda_host" / source), "-o", str(exe)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_fragment_math_matches_ptx_tables(tmp_path):
    exe = tmp_path / "fragments_check"
    _build_host_program("fragments_check.cpp", exe, "-O1", "-Wall", "-Werror")
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr


@pytest.mark.parametrize("scope", ["quick", "full"])
def test_kernels_emulated_on_host(tmp_path, scope):
    """The kernels themselves, run on the CPU (tests/cuda_host/device_shim.h) against a double
    reference, under AddressSanitizer: tiling, pipeline, edge masks, index walking, epilogues."""
    if scope == "full" and os.environ.get("SPARSEKERN_FULL_EMULATION", "0") in ("", "0"):
        pytest.skip("the full emulation (~170 cases, minutes on 2 cores) runs with SPARSEKERN_FULL_EMULATION=1; "
                    "the quick one always runs")
    include = _cuda_include()
    if include is None:
        pytest.skip("no cuda_fp16.h (CUDA toolkit or pip CUDA headers) to compile the kernels for the host")
    exe = tmp_path / "emulate_kernels"
    # -O0: the instrumented build of 36 kernel variants stays quick to compile.
    _build_host_program("emulate_kernels.cpp", exe, "-O0", "-fsanitize=address", "-pthread", f"-I{include}")
    args = [str(exe)] + (["--quick"] if scope == "quick" else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1].startswith("ok"), (
        result.stdout[-4000:] + result.stderr[-4000:])


def _expect_cuda_kernels() -> bool:
    return (torch.version.cuda is not None and _nvcc() is not None
            and os.environ.get("SPARSEKERN_SKIP_CUDA", "0") in ("", "0")
            and os.environ.get("SPARSEKERN_SKIP_EXTENSION", "0") in ("", "0"))


@pytest.mark.skipif(not _expect_cuda_kernels(), reason="this build has no CUDA kernels (no CUDA torch, no nvcc, "
                    "or SPARSEKERN_SKIP_CUDA/SPARSEKERN_SKIP_EXTENSION set)")
def test_extension_exposes_cuda_kernels():
    from sparsekern import _C

    for name in ("bsmm_forward_cuda", "bsmm_grad_input_cuda", "bsmm_grad_weight_cuda"):
        assert callable(getattr(_C, name)), name
    assert "CUDA" in _C.built_with
    assert get_backend("cuda").unavailable_reason() is None


@pytest.mark.skipif(not _expect_cuda_kernels(), reason="this build has no CUDA kernels")
def test_cuda_entry_points_reject_cpu_tensors_before_any_cuda_call():
    from sparsekern import _C

    layout = sparsekern.BlockLayout.random((32, 32), 16, 0.5, generator=torch.Generator().manual_seed(0))
    x, w, g = torch.randn(4, 32), torch.randn(32, 32), torch.randn(4, 32)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _C.bsmm_forward_cuda(x, w, None, layout.row_ptr, layout.col_idx, 16, 16, False)
    with pytest.raises(RuntimeError, match="grad_out must be a CUDA tensor"):
        _C.bsmm_grad_input_cuda(g, w, layout.col_ptr, layout.row_idx, 16, 16, False)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _C.bsmm_grad_weight_cuda(g, x, layout.block_row, layout.col_idx, 16, 16, False)


def test_cuda_tensor_without_cuda_kernels_names_the_backends_that_can(monkeypatch):
    # A build without CUDA kernels: forcing "cuda" raises with the reason and the
    # alternatives; an automatic choice falls back to triton.
    import sparsekern.backend as backend_module  # where the CUDA backends ask the build

    monkeypatch.setattr(backend_module, "unavailable_reason",
                        lambda *names: "the compiled extension lacks " + ", ".join(names))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as selection asks
    device = torch.device("cuda")
    with pytest.raises(BackendUnavailableError) as err:
        select("cuda", device, torch.float16, (32, 32))
    message = str(err.value)
    assert "lacks bsmm_forward_cuda" in message and "Backends that can" in message and "triton" in message
    if "triton" in sys.modules or get_backend("triton").unavailable_reason() is None:
        assert select(None, device, torch.float16, (32, 32)).name == "triton"

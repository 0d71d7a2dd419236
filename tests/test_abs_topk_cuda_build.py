"""The AbsTopK CUDA C++ kernel (csrc/cuda/abs_topk*) without a GPU: it compiles for sm_80 and
sm_90a without spills and its PTX holds what the design relies on (shared-memory histograms,
warp ballots and shuffles, no global atomics); compiled for the host and run on the emulation
of the CUDA execution model (tests/cuda_host/, under AddressSanitizer) it matches the reference
bit for bit (ties, NaN/Inf, -0/+0, subnormals, k = 0, 1, n, odd and long rows, several rows,
fp32/fp16/bf16) with poisoned outputs; the launcher's checks reject what the kernel cannot run;
the extension, where built with CUDA, exposes the entry point and it checks its arguments before
any CUDA call; the registry lists the backend for CUDA tensors only.

tests/test_abs_topk_gpu.py runs the backend on a GPU, and skips without one.
"""

import subprocess

import numpy as np
import pytest
import torch

from sparsekern import cuda_static, toolchain
from sparsekern.activation import reference
from sparsekern.activation.backends import REGISTRY
from test_abs_topk import assert_bitwise, make
from test_cuda_build import _build_host_program, _cuda_include, _expect_cuda_kernels, needs_nvcc

ARCHS = sorted(cuda_static.ARCHS)
SOURCE = "abs_topk.cu"
_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
KINDS = ("normal", "ties", "signed_equal", "zeros", "special", "all_nan", "tiny")


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills(arch):
    # One variant a dtype (fp32, fp16, bf16 keys), with the build's flags; cached.
    entries = toolchain.parse_ptxas(cuda_static.compile_source(SOURCE, arch)[1])
    assert len(entries) == 3, entries
    spilling = [e for e in entries if e["stack"] or e["spill_stores"] or e["spill_loads"]]
    assert not spilling, f"kernels with a stack frame or spills on sm_{arch}: {spilling}"
    assert all(e["registers"] <= 64 for e in entries), entries  # 256 threads: 8 CTAs an SM fit


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_ptx_uses_shared_histograms_and_warp_collectives(arch):
    bodies = cuda_static.ptx_bodies(cuda_static.compile_source(SOURCE, arch)[0])
    assert len(bodies) == 3
    for name, body in bodies.items():
        assert "abs_topk_kernel" in name
        assert "atom.shared.add.u32" in body, f"{name}: no shared-memory histogram"
        assert "vote.sync.ballot" in body and "shfl.sync" in body, f"{name}: no warp ballot / shuffle"
        assert "atom.global" not in body and "red.global" not in body, f"{name}: global atomics"
        assert "mma" not in body, name


_BUILT = {}


def _build(tmp_path_factory, threads):
    """The emulation program for CTAs of `threads` threads (built once a session)."""
    include = _cuda_include()
    if include is None:
        pytest.skip("no cuda_fp16.h (CUDA toolkit or pip CUDA headers) to compile the kernel for the host")
    if threads not in _BUILT:
        exe = tmp_path_factory.mktemp("abs_topk_build") / f"emulate_abs_topk_{threads}"
        _build_host_program("emulate_abs_topk.cpp", exe, "-O1", "-fsanitize=address", "-pthread", f"-I{include}",
                            f"-DSPARSEKERN_ABS_TOPK_THREADS={threads}")
        _BUILT[threads] = exe
    return _BUILT[threads]


def _cases():
    """(x, k) cases: every kind and dtype on short odd rows, then long and wide ones."""
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for i, kind in enumerate(KINDS):
            x = make(kind, (3, 67), dtype, seed=i)
            cases += [(x, k) for k in (0, 1, 22, 66, 67)]
        x = make("ties", (2, 1), dtype, seed=9)
        cases += [(x, 0), (x, 1)]
        # Several chunks of the write pass with the threshold's ties in all of them; a row past
        # 2^16 entries (a 16-bit count would wrap); many rows.
        x = make("signed_equal", (1, 1000), dtype, seed=10)
        cases += [(x, 1), (x, 300), (x, 999)]
        x = make("special", (4, 333), dtype, seed=11)
        cases += [(x, 100)]
    x = make("ties", (1, 70001), torch.bfloat16, seed=12)
    cases += [(x, 40000)]
    x = make("normal", (1, 70001), torch.float32, seed=13)
    cases += [(x, 1)]
    return cases


def _run(exe, tmp_path, cases):
    for i, (x, k) in enumerate(cases):
        header = np.array([_CODES[x.dtype], x.shape[0], x.shape[1], k], dtype=np.int64).tobytes()
        (tmp_path / f"case_{i}.bin").write_bytes(header + x.contiguous().view(_BITS[x.dtype]).numpy().tobytes())
    result = subprocess.run([str(exe), str(tmp_path), str(len(cases))], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and result.stdout.strip().endswith(f"ok {len(cases)} cases"), (
        result.stdout[-4000:] + result.stderr[-4000:])
    for i, (x, k) in enumerate(cases):
        raw = np.fromfile(tmp_path / f"out_{i}.bin", dtype=np.uint8)
        size = x.numel() * x.element_size()
        assert raw.size == size + x.numel()
        values = torch.from_numpy(raw[:size].copy()).view(x.dtype).reshape(x.shape)
        kept = torch.from_numpy(raw[size:].copy()).reshape(x.shape)
        ref_values, ref_kept = reference.abs_topk(x, k)
        what = f"case {i}: {tuple(x.shape)} {x.dtype} k={k}"
        assert set(kept.unique().tolist()) <= {0, 1}, f"{what}: kept holds other bytes than 0 and 1 (unwritten)"
        assert torch.equal(kept.bool(), ref_kept), f"{what}: kept differs at {(kept.bool() != ref_kept).nonzero()[:5]}"
        assert_bitwise(values, ref_values, f"{what} values")


@pytest.mark.parametrize("threads", [64, 256])
def test_kernel_emulated_on_host_matches_reference(tmp_path, tmp_path_factory, threads):
    """64 threads a CTA (fast here: one emulated CUDA thread is one host thread; 4 bins a thread
    in the digit pick, more chunks a row) on every case; the GPU's 256 on a few."""
    exe = _build(tmp_path_factory, threads)
    cases = _cases()
    if threads == 256:
        cases = [c for i, c in enumerate(cases) if i % 17 == 0 or c[0].shape[1] >= 1000]
    _run(exe, tmp_path, cases)


def test_registry_lists_cuda_backend_for_cuda_tensors_only():
    names = REGISTRY.names()
    assert names[:2] == ["cuda", "triton"], names  # the GPU backends first, the automatic order
    backend = REGISTRY.get("cuda")
    assert backend.devices == ("cuda",) and set(backend.dtypes) == {torch.float32, torch.float16, torch.bfloat16}
    assert any("cuda" in why for why in backend.reasons(torch.device("cpu"), torch.float32, None))
    assert any("float64" in why for why in backend.reasons(torch.device("cpu"), torch.float64, None))


@pytest.mark.skipif(not _expect_cuda_kernels(), reason="this build has no CUDA kernels (no CUDA torch, no nvcc, "
                    "or SPARSEKERN_SKIP_CUDA/SPARSEKERN_SKIP_EXTENSION set)")
def test_extension_entry_point_checks_arguments_before_any_cuda_call():
    from sparsekern import _C

    assert REGISTRY.get("cuda").unavailable_reason() is None
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _C.abs_topk_cuda(torch.randn(4, 8), 3)

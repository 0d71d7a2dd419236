"""The CUDA C++ top-k projection kernels (csrc/cuda/topk_*) without a GPU: they compile for
sm_80 and sm_90a with no spills; compiled for the host and run on the emulation of the CUDA
execution model (tests/cuda_host/, under AddressSanitizer) they match the sort-based
reference on random matrices (heavy ties, negative zeros, denormals, floors, k = 0 and
k = n, several CTAs per row, strided weights); the extension exposes them and its entry
points check their arguments; the projection registry lists the backend.

tests/test_projection_cuda_gpu.py runs the backend on a GPU, and skips without one.
"""

import subprocess

import numpy as np
import pytest
import torch

from projection_cases import bits, make_weight
from sparsekern import cuda_static
from sparsekern.backend import BackendUnavailableError
from sparsekern.projection import floors, reference, topk_project_
from sparsekern.projection.backends import REGISTRY
from sparsekern.projection.keys import key_to_magnitude
from test_cuda_build import _build_host_program, _cuda_include, _expect_cuda_kernels, needs_nvcc

ARCHS = sorted(cuda_static.ARCHS)
_NP_BITS = {torch.float32: np.uint32, torch.float16: np.uint16, torch.bfloat16: np.uint16}


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted(cuda_static.TOPK_SOURCES))
def test_uses_shared_memory_atomics(source, arch):
    # The histogram and the per-block counts are built with shared-memory atomics, then
    # added once per CTA into global memory: no per-entry global atomic.
    for name, body in cuda_static.ptx_bodies(cuda_static.compile_source(source, arch)[0]).items():
        kernel = cuda_static.describe_topk(name)["kernel"]
        if kernel in ("topk_hist", "topk_apply"):
            assert "atom.shared.add.u32" in body, f"{name}: no shared-memory histogram"
            assert "red.global.add.u64" in body or "atom.global.add.u64" in body, f"{name}: no global sum"


def _case(w, k, forced, block_size):
    """The bytes emulate_topk.cpp reads: header, the weight's storage, the forced mask."""
    rows, cols = w.shape
    ld_r, ld_c = w.stride()
    assert w.storage_offset() == 0
    storage = (rows - 1) * ld_r + (cols - 1) * ld_c + 1
    flat = torch.as_strided(w, (storage,), (1,))
    bo, bi = block_size if block_size is not None else (0, 0)
    header = np.array([0 if w.dtype == torch.float32 else 1, rows, cols, ld_r, ld_c, storage, k,
                       forced is not None, bo, bi], dtype=np.int64)
    raw = flat.view(torch.int32 if w.dtype == torch.float32 else torch.int16).numpy().tobytes()
    mask = forced.numpy().astype(np.uint8).tobytes() if forced is not None else b""
    return header.tobytes() + raw + mask, flat


def _weights(generator):
    """(weight, k, floors (min_per_row, min_per_col), block_size) cases."""
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for kind in ("normal", "ties", "negzero", "tiny"):
            w = make_weight(kind, (5, 150), dtype, generator)  # two CTAs' worth of columns in one (block_c 256)
            n = w.numel()
            ks = (0, 1, n // 7, n - 1, n) if kind == "ties" else (0, n // 3, n)
            for k in ks:
                yield w, k, (0, 0), (16, 32)
        # Several CTAs per row (block_c 1024): the tie scan crosses CTAs.
        w = make_weight("ties", (3, 1500), dtype, generator)
        yield w, w.numel() // 2, (0, 0), (32, 128)
        yield w, w.numel() // 5, (2, 0), None
        # Floors, kept first: F exactly k, and F plus a fill.
        w = make_weight("ties", (12, 40), dtype, generator)
        yield w, 12 * 3, (3, 0), None
        yield w, 200, (3, 2), (16, 16)
        # Strided: a transposed view and padded rows; their gaps must stay untouched.
        base = make_weight("normal", (40, 6), dtype, generator)
        yield base.t(), 50, (0, 0), (16, 16)
        padded = torch.full((7, 77), float("nan"), dtype=dtype)
        padded[:, :70] = make_weight("ties", (7, 70), dtype, generator)
        yield padded[:, :70], 100, (1, 0), (16, 64)


@pytest.mark.parametrize("threads", [64, 256])
def test_kernels_emulated_on_host_match_reference(tmp_path, generator, threads):
    """The kernels as built for the GPU (256 threads a CTA) on the cases with several CTAs per
    row and a few others, and built with 64 threads a CTA on all cases: one emulated CUDA
    thread is one host thread, so smaller CTAs run faster here (and walk more tiles each)."""
    include = _cuda_include()
    if include is None:
        pytest.skip("no cuda_fp16.h (CUDA toolkit or pip CUDA headers) to compile the kernels for the host")
    exe = tmp_path / "emulate_topk"
    _build_host_program("emulate_topk.cpp", exe, "-O1", "-fsanitize=address", "-pthread", f"-I{include}",
                        f"-DSPARSEKERN_TOPK_THREADS={threads}")
    cases = []
    chosen = [c for i, c in enumerate(_weights(generator)) if threads == 64 or i % 20 == 0 or c[0].shape[1] > 1024]
    for i, (w, k, (mpr, mpc), block_size) in enumerate(chosen):
        forced = floors.floor_mask(w.abs().float(), mpr, mpc) if mpr or mpc else None
        assert forced is None or int(forced.sum()) <= k
        data, flat = _case(w, k, forced, block_size)
        (tmp_path / f"case_{i}.bin").write_bytes(data)
        cases.append((w, k, forced, block_size, flat.clone()))
    result = subprocess.run([str(exe), str(tmp_path), str(len(cases))], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith(f"ok {len(cases)} cases"), (
        result.stdout[-4000:] + result.stderr[-4000:])
    for i, (w, k, forced, block_size, flat) in enumerate(cases):
        what = f"case {i}: {tuple(w.shape)} {w.dtype} k={k} floors={forced is not None} block={block_size}"
        out = np.fromfile(tmp_path / f"out_{i}.bin", dtype=np.uint8)
        size = flat.numel() * flat.element_size()
        got_flat = torch.from_numpy(out[:size].copy().view(_NP_BITS[w.dtype]).astype(np.int64))
        state = np.frombuffer(out[size:size + 16].tobytes(), dtype=np.int64)
        nnz = int(np.frombuffer(out[size + 16:size + 24].tobytes(), dtype=np.int64)[0])
        counts = np.frombuffer(out[size + 24:].tobytes(), dtype=np.int32)

        keep = reference.keep_mask(w.abs().float(), k, forced)
        expected = torch.where(keep, w, torch.zeros_like(w))
        expected_flat = flat.clone()  # the gaps of a strided weight are unchanged
        torch.as_strided(expected_flat, w.shape, w.stride()).copy_(expected)
        mask = 0xFFFFFFFF if w.dtype == torch.float32 else 0xFFFF
        assert torch.equal(got_flat, bits(expected_flat).to(torch.int64) & mask), f"{what}: weight differs"
        assert nnz == int(torch.count_nonzero(expected)), what
        fill = keep if forced is None else keep & ~forced
        cutoff = w.abs()[fill].float().min().item() if bool(fill.any()) else float("inf")
        assert key_to_magnitude(int(state[0]), w.dtype) == cutoff, what
        if block_size is not None:
            assert torch.equal(torch.from_numpy(counts.copy()).view(reference.block_counts(w, block_size).shape),
                               reference.block_counts(expected, block_size)), f"{what}: block counts"
        else:
            assert counts.size == 0


def test_registry_lists_cuda_backend_for_cuda_tensors_only():
    backend = REGISTRY.get("cuda")
    assert backend.devices == ("cuda",)
    assert any("cuda" in why for why in backend.reasons(torch.device("cpu"), torch.float32, None))
    w = torch.randn(4, 4)
    before = w.clone()
    with pytest.raises(BackendUnavailableError, match="runs on cuda tensors, not cpu"):
        topk_project_(w, 3, backend="cuda")
    assert torch.equal(w, before)


@pytest.mark.skipif(not _expect_cuda_kernels(), reason="this build has no CUDA kernels (no CUDA torch, no nvcc, "
                    "or SPARSEKERN_SKIP_CUDA/SPARSEKERN_SKIP_EXTENSION set)")
def test_extension_entry_points_check_arguments():
    from sparsekern import _C

    assert REGISTRY.get("cuda").unavailable_reason() is None
    w = torch.randn(8, 8)
    state, ties = torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="weight must be a CUDA tensor"):
        _C.topk_select_cuda(w, None, 3)
    with pytest.raises(RuntimeError, match="weight must be a CUDA tensor"):
        _C.topk_apply_cuda(w, None, state, ties, 0, 0)

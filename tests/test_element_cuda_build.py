"""The element format's CUDA C++ kernels (csrc/cuda/esmm_*) without a GPU: compiled for the host
and run on the emulation of the CUDA execution model (tests/cuda_host/, under AddressSanitizer),
they match a float64 reference for the three products on random data with NaN in every weight
entry off the layout and NaN-poisoned outputs and scratch: empty, full and single-entry layouts,
a row holding half the nonzeros, several chunks of columns, several tiles of M and of features
(partial ones too), int32 and int64 pointers, strided operands, fp32/fp16/bf16; malformed
indices stay inside the buffers. The PTX holds what the design relies on; the extension, where
built with CUDA, exposes the entry points and they check their arguments before any CUDA call.
(tests/test_cuda_build.py checks that every variant compiles for sm_80/sm_90a without spills.)

tests/test_element_gpu.py runs the backend on a GPU, and skips without one.
"""

import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import POISON, assert_close_to_reference
from sparsekern import ElementLayout, cuda_static
from sparsekern.element.backends import REGISTRY
from test_cuda_build import _build_host_program, _cuda_include, _expect_cuda_kernels, needs_nvcc

ARCHS = sorted(cuda_static.ARCHS)
_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_ptx_uses_warp_collectives_and_no_tensor_cores(arch):
    # Entries are broadcast by shuffles; the weight gradient reduces by shuffles and adds
    # into its fp32 scratch atomically; the products are CUDA-core FMAs (no mma: TF32 never applies).
    for source in cuda_static.ELEMENT_SOURCES:
        for name, body in cuda_static.ptx_bodies(cuda_static.compile_source(source, arch)[0]).items():
            kernel = cuda_static.describe_element(name)["kernel"]
            assert "mma" not in body, name
            if kernel in ("esmm_fwd", "esmm_dw"):
                assert "shfl.sync" in body and "vote.sync.ballot" in body and "fma.rn.f32" in body, name
            if kernel == "esmm_dw":
                assert "red.global.add.f32" in body or "atom.global.add.f32" in body, name


def _storage(t):
    """(strides, the flat storage from the first element) of a 2-D view whose storage starts at it."""
    assert t.storage_offset() == 0
    n = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.numel() else 0
    return t.stride(), torch.as_strided(t, (n,), (1,))


def _raw(t):
    return t.contiguous().view(_BITS[t.dtype]).numpy().tobytes() if t.dtype != torch.float32 else t.numpy().tobytes()


def _view(t, how):
    """t (2-D, contiguous) as the kernels may get it: contiguous, padded rows, or a transposed view."""
    if how == "padded":
        big = torch.full((t.shape[0], t.shape[1] + 3), POISON, dtype=t.dtype)
        big[:, : t.shape[1]] = t
        return big[:, : t.shape[1]]
    if how == "transposed":
        return t.t().contiguous().t()
    return t


def _case_bytes(dtype, int64, x, w, b, g, layout, index=None):
    row_ptr, col_idx, col_ptr, row_idx = index or layout.index_tensors()
    M, K = x.shape
    N = w.shape[0]
    pdtype = torch.int64 if int64 else torch.int32
    header, payload = [_CODES[dtype], int(int64), M, N, K, col_idx.numel(), b is not None], []
    for t in (x, w, g):
        (s0, s1), flat = _storage(t)
        header += [s0, s1, flat.numel()]
        payload.append(flat)
    parts = [np.array(header, dtype=np.int64).tobytes(), _raw(payload[0]), _raw(payload[1])]
    if b is not None:
        parts.append(_raw(b))
    parts += [_raw(payload[2]), row_ptr.to(pdtype).numpy().tobytes(), col_idx.to(torch.int32).numpy().tobytes(),
              col_ptr.to(pdtype).numpy().tobytes(), row_idx.to(torch.int32).numpy().tobytes()]
    return b"".join(parts)


def _layout(shape, density=None, mask=None, seed=0):
    if mask is not None:
        return ElementLayout.from_mask(mask)
    return ElementLayout.random(shape, density, generator=torch.Generator().manual_seed(seed))


def _cases():
    """(name, dtype, int64 pointers, M, layout, bias, x view, weight view, grad_out view)."""
    skewed = torch.rand(64, 300, generator=torch.Generator().manual_seed(1)) < 0.01
    skewed[17] = True  # one row holding about half the nonzeros; 300 columns: three chunks
    single = torch.zeros(40, 50, dtype=torch.bool)
    single[13, 29] = True
    full_col = torch.zeros(40, 150, dtype=torch.bool)
    full_col[:, 141] = True
    layouts = {
        "random": (_layout((70, 100), 0.3, seed=2), 37),
        "empty": (_layout((30, 20), mask=torch.zeros(30, 20, dtype=torch.bool)), 21),
        "full": (_layout((20, 13), mask=torch.ones(20, 13, dtype=torch.bool)), 21),
        "single": (_layout((40, 50), mask=single), 9),
        "skewed": (_layout((64, 300), mask=skewed), 19),
        "full-col": (_layout((40, 150), mask=full_col), 5),
        # Several tiles of M (partial: 130 = 128 + 2, 65 = 64 + 1) and of features, odd sides.
        "tiles": (_layout((33, 257), 0.05, seed=3), 130),
        "tall": (_layout((257, 33), 0.05, seed=4), 65),
    }
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for i, (name, (layout, M)) in enumerate(layouts.items()):
            int64 = (i + _CODES[dtype]) % 2 == 1
            views = ("contiguous", "contiguous", "contiguous")
            if name == "random":
                views = ("transposed", "padded", "padded")
            elif name == "tiles" and dtype == torch.float16:
                views = ("padded", "transposed", "transposed")
            cases.append((name, dtype, int64, M, layout, name != "full", *views))
    return cases


def _expected(x, w, b, g, mask):
    w_masked = torch.where(mask, w, 0)
    x64, g64, w64 = x.double(), g.double(), w_masked.double()
    expected = {"y": F.linear(x64, w64, b.double() if b is not None else None), "dx": g64 @ w64,
                "dw": torch.where(mask, g64.t() @ x64, 0)}
    own = {"y": F.linear(x, w_masked, b), "dx": g @ w_masked, "dw": torch.where(mask, g.t() @ x, 0)}
    return expected, own


_BUILT = {}


def _build(tmp_path_factory, warps):
    """The emulation program for CTAs of `warps` warps (built once a session)."""
    include = _cuda_include()
    if include is None:
        pytest.skip("no cuda_fp16.h (CUDA toolkit or pip CUDA headers) to compile the kernels for the host")
    if warps not in _BUILT:
        exe = tmp_path_factory.mktemp("esmm_build") / f"emulate_esmm_{warps}"
        _build_host_program("emulate_esmm.cpp", exe, "-O1", "-fsanitize=address", "-pthread", f"-I{include}",
                            f"-DSPARSEKERN_ESMM_WARPS={warps}")
        _BUILT[warps] = exe
    return _BUILT[warps]


def _run(exe, tmp_path, blobs):
    for i, blob in enumerate(blobs):
        (tmp_path / f"case_{i}.bin").write_bytes(blob)
    result = subprocess.run([str(exe), str(tmp_path), str(len(blobs))], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith(f"ok {len(blobs)} cases"), (
        result.stdout[-4000:] + result.stderr[-4000:])


def _read_out(path, dtype, shapes):
    raw = np.fromfile(path, dtype=np.uint8)
    size = torch.tensor([], dtype=dtype).element_size()
    outs, at = [], 0
    for shape in shapes:
        n = shape[0] * shape[1] * size
        t = torch.from_numpy(raw[at:at + n].copy()).view(dtype).reshape(shape)
        outs.append(t)
        at += n
    assert at == raw.size
    return outs


@pytest.mark.parametrize("warps", [2, 8], ids=lambda w: f"{w}warps")
def test_kernels_emulated_on_host_match_reference(tmp_path, tmp_path_factory, warps):
    """2 warps a CTA (fast here: one emulated CUDA thread is one host thread; more tiles of
    features per case) on every case; the GPU's 8 warps on a few."""
    exe = _build(tmp_path_factory, warps)
    cases = [c for c in _cases() if warps == 2 or (c[0], c[1]) in (("skewed", torch.bfloat16), ("tiles", torch.float32))]
    gen = torch.Generator().manual_seed(warps)
    blobs, data = [], []
    for name, dtype, int64, M, layout, with_bias, xv, wv, gv in cases:
        N, K = layout.shape
        mask = layout.to_mask()
        w = torch.where(mask, torch.randn(N, K, generator=gen), POISON).to(dtype)
        x = torch.randn(M, K, generator=gen).to(dtype)
        g = torch.randn(M, N, generator=gen).to(dtype)
        b = torch.randn(N, generator=gen).to(dtype) if with_bias else None
        blobs.append(_case_bytes(dtype, int64, _view(x, xv), _view(w, wv), b, _view(g, gv), layout))
        data.append((x, w, b, g, mask))
    _run(exe, tmp_path, blobs)
    for i, ((name, dtype, int64, M, layout, *_), (x, w, b, g, mask)) in enumerate(zip(cases, data)):
        N, K = layout.shape
        y, dx, dw = _read_out(tmp_path / f"out_{i}.bin", dtype, [(M, N), (M, K), (N, K)])
        expected, own = _expected(x, w, b, g, mask)
        what = f"case {i} {name} {dtype} int64={int64} M={M} shape={layout.shape}"
        for key, got in (("y", y), ("dx", dx), ("dw", dw)):
            assert_close_to_reference(got, expected[key], own[key], name=f"{what} {key}")
        assert (dw[~mask] == 0).all(), f"{what}: dw must be exactly zero off the layout"


def test_malformed_indices_stay_in_bounds(tmp_path, tmp_path_factory):
    """Pointers past nnz or decreasing, columns out of range or unsorted: the kernels must not
    touch memory outside the buffers (AddressSanitizer aborts the program if they do)."""
    exe = _build(tmp_path_factory, 2)
    layout = _layout((24, 40), 0.2, seed=5)
    row_ptr, col_idx, col_ptr, row_idx = (t.clone() for t in layout.index_tensors())
    bad = []
    for kind in ("ptr-past-end", "ptr-decreasing", "col-too-big", "col-negative", "unsorted"):
        rp, ci, cp, ri = row_ptr.clone(), col_idx.clone(), col_ptr.clone(), row_idx.clone()
        if kind == "ptr-past-end":
            rp[-1] += 1000
            cp[5] = -7
        elif kind == "ptr-decreasing":
            rp[3], rp[4] = rp[4] + 5, rp[3] - 5
            cp[10] = cp[-1] + 3
        elif kind == "col-too-big":
            ci[::7] = 1 << 30
            ri[::5] = 24
        elif kind == "col-negative":
            ci[::3] = -1
            ri[1] = -(1 << 30)
        else:
            ci[:] = ci.flip(0)
            ri[:] = ri.flip(0)
        bad.append((rp, ci, cp, ri))
    gen = torch.Generator().manual_seed(6)
    blobs = []
    for i, index in enumerate(bad):
        dtype = (torch.float32, torch.bfloat16)[i % 2]
        x, g = torch.randn(9, 40, generator=gen).to(dtype), torch.randn(9, 24, generator=gen).to(dtype)
        w = torch.randn(24, 40, generator=gen).to(dtype)
        blobs.append(_case_bytes(dtype, i % 2 == 0, x, w, None, g, layout, index))
    _run(exe, tmp_path, blobs)


def test_registry_lists_cuda_backend_for_cuda_tensors_only():
    backend = REGISTRY.get("cuda")
    assert backend.devices == ("cuda",) and torch.float16 in backend.dtypes
    assert any("cuda" in why for why in backend.reasons(torch.device("cpu"), torch.float32, None))


@pytest.mark.skipif(not _expect_cuda_kernels(), reason="this build has no CUDA kernels (no CUDA torch, no nvcc, "
                    "or SPARSEKERN_SKIP_CUDA/SPARSEKERN_SKIP_EXTENSION set)")
def test_extension_entry_points_check_arguments_before_any_cuda_call():
    from sparsekern import _C

    assert REGISTRY.get("cuda").unavailable_reason() is None
    layout = _layout((40, 70), 0.2, seed=7)
    row_ptr, col_idx, col_ptr, row_idx = layout.index_tensors()
    x, w, g = torch.randn(5, 70), torch.randn(40, 70), torch.randn(5, 40)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _C.esmm_forward_cuda(x, w, None, row_ptr, col_idx)
    with pytest.raises(RuntimeError, match="grad_out must be a CUDA tensor"):
        _C.esmm_grad_input_cuda(g, w, col_ptr, row_idx)
    with pytest.raises(RuntimeError, match="x must be a CUDA tensor"):
        _C.esmm_grad_weight_cuda(g, x, row_ptr, col_idx)

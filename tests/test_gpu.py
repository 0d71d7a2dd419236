"""The correctness matrix on CUDA tensors, for every backend that can run them.

Skipped without a CUDA device: no GPU is available to this project's CI. ``make gpu-check``
runs this module (and every other one that needs a GPU) on one.
"""

import os

import pytest
import torch

import sparsekern
from conftest import backend_cases
from linear_cases import cuda_tf32, run_linear_case
from sparsekern.block.backends import get_backend, select

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)")]

# Every backend that runs CUDA tensors here, with every dtype it runs there (conftest's grid).
CASES = backend_cases("cuda") if torch.cuda.is_available() else []
FP32_BACKENDS = [b for b, d in CASES if d == torch.float32 and b != "reference"]  # reference is torch itself
# Set by make gpu-check: on the GPU machine the CUDA C++ kernels must be built and chosen.
EXPECT_CUDA = os.environ.get("SPARSEKERN_EXPECT_CUDA", "0") not in ("", "0")


@pytest.fixture(autouse=True)
def _ieee(ieee_fp32):
    """The fp32 bar is IEEE (conftest.ieee_fp32); TF32 is tested separately."""


@pytest.mark.parametrize("backend,dtype", CASES)
@pytest.mark.parametrize("block_size", [16, 32, 64, 128, (32, 16), (16, 64), (128, 32)], ids=str)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_products_match_reference(backend, dtype, block_size, density):
    run_linear_case(backend, dtype, M=300, N=333, K=270, block_size=block_size, density=density,
                    device="cuda", bias=density != 0.3)


@pytest.mark.parametrize("backend,dtype", CASES)
def test_3d_and_noncontiguous(backend, dtype):
    run_linear_case(backend, dtype, None, 96, 160, 32, 0.5, batch_shape=(4, 33), device="cuda")
    run_linear_case(backend, dtype, None, 96, 160, (16, 32), 0.5, batch_shape=(4, 33),
                    noncontiguous=True, device="cuda")


@pytest.mark.parametrize("backend", FP32_BACKENDS)
@pytest.mark.parametrize("block_size", [32, (64, 16)], ids=str)
def test_tf32_within_twice_torchs_tf32_error(backend, block_size):
    # TF32 must really be on for both sides, or the bar below would be IEEE's: cuBLAS and the
    # backend each give a different result with the flag than without it.
    gen = torch.Generator().manual_seed(2)
    layout = sparsekern.BlockLayout.random((128, 256), block_size, 0.5, generator=gen, device="cuda")
    w = torch.randn(128, 256, generator=gen).cuda() * layout.to_mask()
    x = torch.randn(64, 256, generator=gen).cuda()
    ieee = (x @ w.t(), sparsekern.block_sparse_linear(x, w, layout, backend=backend))
    with cuda_tf32(True):
        tf32 = (x @ w.t(), sparsekern.block_sparse_linear(x, w, layout, backend=backend))
    assert not torch.equal(ieee[0], tf32[0]), "cuBLAS ignored allow_tf32"
    assert not torch.equal(ieee[1], tf32[1]), f"{backend} ignored allow_tf32"
    # All three products with TF32 on, against twice cuBLAS's own TF32 error on the same data.
    run_linear_case(backend, torch.float32, M=256, N=200, K=320, block_size=block_size, density=0.5,
                    device="cuda", tf32=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_automatic_choice_runs_the_fastest_gpu_backend(dtype, monkeypatch):
    # The package's own selection (what block_sparse_linear does with backend=None): the CUDA C++
    # kernels when built for this GPU, else Triton; never the dense reference.
    monkeypatch.delenv("SPARSEKERN_BACKEND", raising=False)
    device = torch.device("cuda")
    cuda_runs = not get_backend("cuda").reasons(device, dtype, (32, 32))
    assert cuda_runs or not EXPECT_CUDA, get_backend("cuda").reasons(device, dtype, (32, 32))
    expected = "cuda" if cuda_runs else "triton"
    assert select(None, device, dtype, (32, 32)).name == expected
    backend = get_backend(expected)
    calls = []
    original = backend.forward
    monkeypatch.setattr(backend, "forward", lambda *args: calls.append(args[0].is_cuda) or original(*args))
    layout = sparsekern.BlockLayout.random((64, 96), 32, 0.5, device="cuda")
    w = torch.randn(64, 96, device="cuda", dtype=dtype) * layout.to_mask()
    y = sparsekern.block_sparse_linear(torch.randn(8, 96, device="cuda", dtype=dtype), w, layout)
    assert y.shape == (8, 64) and calls == [True]

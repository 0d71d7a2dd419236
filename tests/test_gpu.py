"""The correctness matrix on CUDA tensors, for every backend that can run them.

Skipped without a CUDA device: no GPU is available to this project's CI.
"""

import pytest
import torch

import sparsekern
from linear_cases import run_linear_case

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)")]


def gpu_cases():
    if not torch.cuda.is_available():
        return []
    cases = []
    for name in sparsekern.available_backends("cuda"):
        backend = sparsekern.backends.get_backend(name)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            if dtype in backend.dtypes:
                cases.append((name, dtype))
    return cases


@pytest.fixture(autouse=True)
def _ieee(ieee_fp32):
    """The fp32 bar is IEEE (conftest.ieee_fp32); TF32 is tested separately."""


@pytest.mark.parametrize("backend,dtype", gpu_cases())
@pytest.mark.parametrize("block_size", [16, 32, 64, 128, (32, 16), (16, 64), (128, 32)], ids=str)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_products_match_reference(backend, dtype, block_size, density):
    run_linear_case(backend, dtype, M=300, N=333, K=270, block_size=block_size, density=density,
                    device="cuda", bias=density != 0.3)


@pytest.mark.parametrize("backend,dtype", gpu_cases())
def test_3d_and_noncontiguous(backend, dtype):
    run_linear_case(backend, dtype, None, 96, 160, 32, 0.5, batch_shape=(4, 33), device="cuda")
    run_linear_case(backend, dtype, None, 96, 160, (16, 32), 0.5, batch_shape=(4, 33),
                    noncontiguous=True, device="cuda")


@pytest.mark.parametrize("backend", [b for b, d in gpu_cases() if d == torch.float32])
def test_tf32_close_to_reference(backend):
    torch.backends.cuda.matmul.allow_tf32 = True
    gen = torch.Generator().manual_seed(0)
    layout = sparsekern.BlockLayout.random((256, 256), 32, 0.5, generator=gen, device="cuda")
    w = (torch.randn(256, 256, generator=gen) * layout.to_mask().cpu()).cuda()
    x = torch.randn(128, 256, generator=gen).cuda()
    y = sparsekern.block_sparse_linear(x, w, layout, backend=backend)
    expected = x.double() @ w.double().t()
    assert (y.double() - expected).abs().max() < 5e-2  # TF32: 10-bit mantissa


def test_automatic_choice_on_cuda_is_not_reference():
    assert sparsekern.available_backends("cuda")[0] in ("cuda", "triton")

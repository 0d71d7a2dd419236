"""Every backend that can run CPU tensors here, against the fp64 reference.

The triton backend runs under the interpreter (TRITON_INTERPRET=1, set by conftest),
so shapes stay small. bf16 is left out of the interpreter only (wrong tl.dot there).
"""

import os
import zlib

import pytest
import torch

import sparsekern

from conftest import backend_dtypes, cpu_backends
from linear_cases import run_linear_case

BACKENDS = [b for b in cpu_backends() if b != "reference"] or ["reference"]
COMPILED = [b for b in BACKENDS if b not in ("reference", "triton")]
CASES = [(b, d) for b in BACKENDS for d in backend_dtypes(b)]

BLOCKS = [16, 32, 64, (32, 16), (16, 64)]


@pytest.mark.parametrize("backend,dtype", CASES)
@pytest.mark.parametrize("block_size", BLOCKS, ids=str)
@pytest.mark.parametrize("density", [0.0, 0.4, 1.0])
def test_products_match_reference(backend, dtype, block_size, density):
    # 70 x 100 weight: neither side a multiple of any block, so edge blocks are partial.
    run_linear_case(backend, dtype, M=37, N=70, K=100, block_size=block_size, density=density,
                    bias=density != 0.4, seed=zlib.crc32(f"{block_size}{density}".encode()))


@pytest.mark.parametrize("backend,dtype", CASES)
def test_3d_input(backend, dtype):
    run_linear_case(backend, dtype, M=None, N=48, K=80, block_size=16, density=0.5, batch_shape=(3, 11))


@pytest.mark.parametrize("backend,dtype", CASES)
def test_noncontiguous_input(backend, dtype):
    run_linear_case(backend, dtype, M=None, N=40, K=64, block_size=(16, 32), density=0.6,
                    batch_shape=(2, 9), noncontiguous=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_batch_and_exact_multiples(backend):
    # Several M tiles and shapes that are exact multiples of the block.
    run_linear_case(backend, torch.float32, M=150, N=64, K=128, block_size=32, density=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_grad_only_and_weight_grad_only(backend):
    import sparsekern

    gen = torch.Generator().manual_seed(3)
    layout = sparsekern.BlockLayout.random((48, 40), 16, 0.5, generator=gen)
    w = torch.randn(48, 40, generator=gen) * layout.to_mask()
    x = torch.randn(5, 40, generator=gen)
    # Only x needs a gradient: weight gets none and the call still works.
    xr = x.clone().requires_grad_()
    sparsekern.block_sparse_linear(xr, w, layout, backend=backend).sum().backward()
    torch.testing.assert_close(xr.grad, torch.ones(5, 48) @ w, rtol=1e-5, atol=1e-5)
    wr = w.clone().requires_grad_()
    sparsekern.block_sparse_linear(x, wr, layout, backend=backend).sum().backward()
    torch.testing.assert_close(wr.grad, (torch.ones(5, 48).t() @ x) * layout.to_mask(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", COMPILED)
def test_large_outputs_allocated_by_the_kernel(backend):
    # Outputs over 4 MiB, not poisoned: the backend allocates them itself (the C++ extension
    # takes a different allocation path for large outputs).
    run_linear_case(backend, torch.float32, M=1100, N=1040, K=1030, block_size=64, density=0.2,
                    poison=False)


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI only: a developer machine may lack the extension")
def test_ci_builds_the_cpu_backend():
    # In CI the compiled extension must build; otherwise this matrix would quietly shrink.
    assert "cpu" in sparsekern.available_backends("cpu"), sparsekern.block.backends.get_backend("cpu").reasons(
        torch.device("cpu"), torch.float32, (32, 32))

"""The oracle itself, against torch.nn.functional.linear and gradcheck."""

import pytest
import torch
import torch.nn.functional as F

import sparsekern
from conftest import random_weight


@pytest.mark.parametrize("block_size", [16, (16, 32)])
def test_reference_matches_masked_linear(block_size):
    gen = torch.Generator().manual_seed(0)
    layout = sparsekern.BlockLayout.random((50, 70), block_size, 0.5, generator=gen)
    w = random_weight(layout, torch.float64, generator=gen)  # NaN outside the layout
    x = torch.randn(9, 70, generator=gen, dtype=torch.float64)
    b = torch.randn(50, generator=gen, dtype=torch.float64)
    y = sparsekern.block_sparse_linear(x, w, layout, b, backend="reference")
    expected = F.linear(x, torch.where(layout.to_mask(), w, 0), b)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_reference_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    layout = sparsekern.BlockLayout.random((20, 36), 16, 0.5, generator=gen)
    w = (torch.randn(20, 36, generator=gen, dtype=torch.float64) * layout.to_mask()).requires_grad_()
    x = torch.randn(4, 36, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(20, generator=gen, dtype=torch.float64, requires_grad=True)

    # gradcheck perturbs every weight entry; off-layout entries do not affect the output,
    # so their numerical gradient is 0, which the sampled dW must match exactly.
    def fn(x, w, b):
        return sparsekern.block_sparse_linear(x, w, layout, b, backend="reference")

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_dense_weight_grad_is_the_full_product():
    gen = torch.Generator().manual_seed(2)
    layout = sparsekern.BlockLayout.random((32, 48), 16, 0.3, generator=gen)
    w = (torch.randn(32, 48, generator=gen) * layout.to_mask()).requires_grad_()
    x = torch.randn(6, 48, generator=gen)
    g = torch.randn(6, 32, generator=gen)
    sparsekern.block_sparse_linear(x, w, layout, dense_weight_grad=True).backward(g)
    torch.testing.assert_close(w.grad, g.t() @ x)

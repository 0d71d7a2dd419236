"""The products as torch operators: opcheck, and torch.compile without graph breaks."""

import warnings

import pytest
import torch

import sparsekern
from sparsekern.block import ops
from conftest import cpu_backends

BACKENDS = cpu_backends()


def sample(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layout = sparsekern.BlockLayout.random((40, 70), 16, 0.5, generator=gen)
    w = torch.randn(40, 70, generator=gen, dtype=dtype) * layout.to_mask()
    x = torch.randn(9, 70, generator=gen, dtype=dtype)
    g = torch.randn(9, 40, generator=gen, dtype=dtype)
    b = torch.randn(40, generator=gen, dtype=dtype)
    return layout, w, x, g, b


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_every_op(backend):
    layout, w, x, g, b = sample()
    bo, bi = layout.block_size
    cases = [
        (ops.bsmm_forward, (x, w, b, layout.row_ptr, layout.col_idx, bo, bi, backend)),
        (ops.bsmm_forward, (x, w, None, layout.row_ptr, layout.col_idx, bo, bi, backend)),
        (ops.bsmm_grad_input, (g, w, layout.col_ptr, layout.row_idx, bo, bi, backend)),
        (ops.bsmm_grad_weight, (g, x, layout.block_row, layout.col_idx, bo, bi, backend)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_ops_are_registered_in_the_namespace():
    for name in ("bsmm_forward", "bsmm_grad_input", "bsmm_grad_weight"):
        assert hasattr(torch.ops.sparsekern, name)


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = sparsekern.SparseLinear(64, 96, density=0.5, block_size=32)
        self.b = sparsekern.SparseLinear(96, 32, density=0.5, block_size=(16, 32))

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = TwoLayer()
    x = torch.randn(2, 5, 64)
    eager_out = model(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    # fullgraph=True raises on any graph break. The backend choice must be a constant of the
    # graph (function._choose_backend's mark): traced instead, dynamo would step into the
    # extension loader's lru_cache and warn about it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        out.sum().backward()
    traced = [str(w.message) for w in caught if "lru_cache" in str(w.message) or w.filename.endswith("_extension.py")]
    assert not traced, traced
    torch.testing.assert_close(out, eager_out)
    for p, expected in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, expected)


def test_compile_inductor_on_cpu():
    torch.manual_seed(1)
    torch._dynamo.reset()
    model = TwoLayer()
    x = torch.randn(4, 64)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))

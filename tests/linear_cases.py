"""One correctness check of a backend's three products against the fp64 reference.

Shared by the CPU matrix (tests/test_linear_backends.py), the property tests and the
GPU module, so every backend on every device meets the same bar.
"""

import contextlib

import torch
import torch.nn.functional as F

import sparsekern
from sparsekern._alloc import poisoned_outputs
from conftest import TF32_EPS, assert_close_to_reference, assert_within_twice_torch, random_weight


@contextlib.contextmanager
def cuda_tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def run_linear_case(backend, dtype, M, N, K, block_size, density, *, bias=True, batch_shape=None,
                    noncontiguous=False, device="cpu", seed=0, poison=True, tf32=False, layout=None,
                    dense_weight_grad=False):
    """A random ``BlockLayout`` of ``block_size`` and ``density``, or the ``layout`` given (any
    format: ``sparse_linear`` dispatches on it; N and K are then its shape). ``tf32=True``
    (fp32 on CUDA): TF32 matmuls for sparsekern and for torch's own result, held to the
    low-precision bar (twice torch's own TF32 error)."""
    with cuda_tf32(tf32) if tf32 else contextlib.nullcontext():
        return _run_linear_case(backend, dtype, M, N, K, block_size, density, bias, batch_shape,
                                noncontiguous, device, seed, poison, tf32, layout, dense_weight_grad)


def run_element_case(backend, dtype, M, layout, **kwargs):
    """``run_linear_case`` on an ``ElementLayout``."""
    return run_linear_case(backend, dtype, M, *layout.shape, None, None, layout=layout, **kwargs)


def _run_linear_case(backend, dtype, M, N, K, block_size, density, bias, batch_shape, noncontiguous,
                     device, seed, poison, tf32, layout, dense_weight_grad):
    gen = torch.Generator().manual_seed(seed)
    if layout is None:
        layout = sparsekern.BlockLayout.random((N, K), block_size, density, generator=gen, device=device)
    mask = layout.to_mask()
    weight = random_weight(layout, dtype, device, gen)  # NaN outside the active blocks
    lead = batch_shape if batch_shape is not None else (M,)
    if noncontiguous:  # a transposed view: the last dim is not unit-stride
        x = torch.randn((*lead[:-1], K, lead[-1]), generator=gen).to(device, dtype).transpose(-1, -2)
        assert not x.is_contiguous()
    else:
        x = torch.randn((*lead, K), generator=gen).to(device, dtype)
    b = torch.randn(N, generator=gen).to(device, dtype) if bias else None
    grad = torch.randn((*lead, N), generator=gen).to(device, dtype)

    xr = x.detach().clone().requires_grad_()
    wr = weight.detach().clone().requires_grad_()
    br = b.detach().clone().requires_grad_() if bias else None
    with poisoned_outputs() if poison else contextlib.nullcontext():
        y = sparsekern.sparse_linear(xr, wr, layout, br, backend=backend, dense_weight_grad=dense_weight_grad)
        y.backward(grad)

    # The fp64 oracle, and torch's own result in the low-precision dtype for the 2x bar.
    w_masked = torch.where(mask, weight, 0)
    x2, g2 = x.reshape(-1, K), grad.reshape(-1, N)
    x64, g64, w64 = x2.double(), g2.double(), w_masked.double()
    expected = {
        "y": F.linear(x64, w64, b.double() if bias else None).reshape(y.shape),
        "dx": (g64 @ w64).reshape(x.shape),
        "dw": g64.t() @ x64 if dense_weight_grad else torch.where(mask, g64.t() @ x64, 0),
    }
    own = {
        "y": F.linear(x, w_masked, b),
        "dx": (g2 @ w_masked).reshape(x.shape),
        "dw": g2.t() @ x2 if dense_weight_grad else torch.where(mask, g2.t() @ x2, 0),
    }
    actual = {"y": y, "dx": xr.grad, "dw": wr.grad}
    for name in ("y", "dx", "dw"):
        if tf32:
            assert_within_twice_torch(actual[name].cpu(), expected[name].cpu(), own[name].cpu(), TF32_EPS,
                                      name=f"{backend} tf32 {name}")
        else:
            assert_close_to_reference(actual[name].cpu(), expected[name].cpu(), own[name].cpu(),
                                      name=f"{backend} {name}")
    # The weight gradient is exactly zero off the layout (never a dense product).
    if not dense_weight_grad:
        assert (wr.grad[~mask] == 0).all(), "dweight must be exactly zero outside the layout"
    if bias:
        assert_close_to_reference(br.grad.cpu(), g64.sum(0).cpu(), g2.sum(0).cpu(), name=f"{backend} dbias")
    return layout


def layout_of_weight(layer):
    """The layout a layer must hold after a projection or a refresh: its weight's nonzeros, as
    entries (element format, or dense/auto over entries) or as the blocks holding them."""
    if isinstance(layer.layout, sparsekern.ElementLayout):
        return sparsekern.ElementLayout.from_weight(layer.weight)
    return sparsekern.BlockLayout.from_weight(layer.weight, layer.block_size)

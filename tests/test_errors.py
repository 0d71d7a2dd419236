"""Bad input: a clear error naming the argument, raised before any kernel runs."""

import pytest
import torch

import sparsekern
from sparsekern import BlockLayout, block_sparse_linear
from sparsekern.backend import BackendUnavailableError


@pytest.fixture
def args():
    layout = BlockLayout.random((32, 48), 16, 0.5, generator=torch.Generator().manual_seed(0))
    return torch.randn(4, 48), torch.randn(32, 48), layout, torch.randn(32)


@pytest.fixture
def no_kernel(monkeypatch):
    """Fails the test if any backend product is reached."""
    def boom(*a, **k):
        raise AssertionError("a kernel ran before the arguments were checked")
    for name in sparsekern.backend_names():
        backend = sparsekern.block.backends.get_backend(name)
        for product in ("forward", "grad_input", "grad_weight"):
            monkeypatch.setattr(backend, product, boom)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda x, w, l, b: (x.double(), w, l, b), TypeError, "x must match weight"),
    (lambda x, w, l, b: (x, w, l, b.double()), TypeError, "bias must match weight"),
    (lambda x, w, l, b: (x[:, :40], w, l, b), ValueError, r"x.shape\[-1\] must equal in_features=48"),
    (lambda x, w, l, b: (x, w, l, b[:31]), ValueError, r"bias must have shape \(32,\)"),
    (lambda x, w, l, b: (x, w[:, :40], l, b), ValueError, "in_features=40"),
    (lambda x, w, l, b: (x[:, :40], w[:, :40], l, b), ValueError, "layout.shape must equal weight.shape"),
    (lambda x, w, l, b: (x.long(), w, l, b), TypeError, "x must be a floating-point tensor"),
    (lambda x, w, l, b: (x, w.int(), l, b), TypeError, "weight must be a floating-point tensor"),
    (lambda x, w, l, b: (x, w, l, b.int()), TypeError, "bias must be a floating-point tensor"),
    (lambda x, w, l, b: (x, w, "layout", b), TypeError, "layout must be a sparsekern.BlockLayout"),
    (lambda x, w, l, b: (x, w[0], l, b), ValueError, "weight must be 2-D"),
    (lambda x, w, l, b: (x.to("meta"), w, l, b), TypeError, "x must match weight"),
])
def test_bad_arguments(args, no_kernel, mutate, exc, match):
    x, w, layout, b = mutate(*args)
    with pytest.raises(exc, match=match):
        block_sparse_linear(x, w, layout, b)


def test_unknown_backend(args, no_kernel):
    with pytest.raises(ValueError, match="backend must be one of"):
        block_sparse_linear(*args[:3], backend="tpu")


def test_forced_backend_that_cannot_run_says_why(args, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton: CUDA only outside the interpreter
    with pytest.raises(BackendUnavailableError, match="backend='triton' cannot run this call: .*not cpu"):
        block_sparse_linear(*args[:3], backend="triton")


def test_environment_variable_forces_a_backend(args, monkeypatch):
    monkeypatch.setenv("SPARSEKERN_BACKEND", "reference")
    calls = []
    backend = sparsekern.block.backends.get_backend("reference")
    original = backend.forward
    monkeypatch.setattr(backend, "forward", lambda *a: calls.append(1) or original(*a))
    block_sparse_linear(*args[:3])
    assert calls == [1]
    monkeypatch.setenv("SPARSEKERN_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        block_sparse_linear(*args[:3])


def test_float64_forced_on_a_backend_without_it(args):
    x, w, layout, _ = args
    for name in sparsekern.backend_names():
        backend = sparsekern.block.backends.get_backend(name)
        if torch.float64 not in backend.dtypes:
            with pytest.raises(BackendUnavailableError, match="float64"):
                block_sparse_linear(x.double(), w.double(), layout, backend=name)


def test_automatic_choice_falls_back_to_reference_for_float64(args):
    x, w, layout, _ = args
    y = block_sparse_linear(x.double(), w.double(), layout)
    expected = x.double() @ (w.double() * layout.to_mask()).t()
    torch.testing.assert_close(y, expected)


def test_available_backends_lists_reference_everywhere():
    names = sparsekern.available_backends("cpu")
    assert "reference" in names
    assert names == [n for n in sparsekern.backend_names() if n in names]  # priority order kept
    assert "cuda" not in names


def test_cuda_tensor_request_without_cuda_names_the_backends(args, monkeypatch):
    # On a machine with no CUDA, forcing the cuda backend for CPU tensors explains itself.
    with pytest.raises(BackendUnavailableError, match="backend='cuda' cannot run this call"):
        block_sparse_linear(*args[:3], backend="cuda")


def test_cuda_backend_declines_gpus_it_was_not_built_for():
    from sparsekern.backend import _runs_on

    assert _runs_on("8.0", 8, 0) and _runs_on("8.0", 8, 9)  # sm_80 cubins run on later 8.x
    assert not _runs_on("8.0", 7, 5) and not _runs_on("8.0", 9, 0)
    assert _runs_on("9.0a", 9, 0) and not _runs_on("9.0a", 10, 0)  # arch-specific: 9.0 only
    assert _runs_on("8.0+PTX", 12, 0) and not _runs_on("8.0+PTX", 7, 5)  # PTX: any later GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA device")
def test_asking_for_cuda_without_a_gpu_answers_instead_of_raising():
    # Before: the cuda backend queried the device's capability and torch raised "no NVIDIA driver".
    assert sparsekern.available_backends("cuda") == []
    assert sparsekern.projection_backends("cuda", torch.float32) == []
    with pytest.raises(sparsekern.BackendUnavailableError, match="no CUDA device here"):
        sparsekern.block.backends.select("cuda", torch.device("cuda"), torch.float32, (32, 32))

"""Shared test set-up: the Triton interpreter on CPU-only machines, tolerances, data makers.

TRITON_INTERPRET must be set before triton is imported anywhere, so it is set here,
at collection time, when no CUDA device is present.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import sparsekern  # noqa: E402

# One tolerance table by dtype: (rtol, atol per unit of the output's largest magnitude).
# Low precision: sparsekern's error against an fp32 reference must be at most twice
# torch's own matmul error in that dtype (see assert_close_to_reference).
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-6, 4e-6),
}

POISON = float("nan")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def device_backends(device="cpu") -> list[str]:
    """Backends that can run ``device``'s tensors in this process, in the automatic order
    (triton on CPU tensors only under the interpreter)."""
    device = torch.device(device)
    return [name for name in sparsekern.backend_names()
            if not sparsekern.block.backends.get_backend(name).reasons(device, torch.float32, (32, 32))]


def cpu_backends() -> list[str]:
    return device_backends("cpu")


def backend_dtypes(name: str, device="cpu") -> list[torch.dtype]:
    """Low- and full-precision dtypes a backend runs on ``device`` here (bf16 excluded from the
    Triton interpreter, whose tl.dot on bf16 is wrong in Triton 3.8/3.9)."""
    backend = sparsekern.block.backends.get_backend(name)
    device = torch.device(device)
    dtypes = [d for d in (torch.float32, torch.float16, torch.bfloat16)
              if not backend.reasons(device, d, (32, 32))]
    if name == "triton" and device.type == "cpu" and interpreting():
        dtypes = [d for d in dtypes if d != torch.bfloat16]
    return dtypes


def backend_cases(device="cpu", names=None) -> list[tuple[str, torch.dtype]]:
    """``(backend, dtype)`` for every backend of ``names`` (default: all that run on ``device``)
    and every dtype it runs there: the grid of the correctness matrices."""
    names = device_backends(device) if names is None else names
    return [(name, dtype) for name in names for dtype in backend_dtypes(name, device)]


def random_weight(layout, dtype, device="cpu", generator=None, poison_outside=True):
    """A weight with fresh random values on the active blocks and NaN outside them,
    so a kernel that reads an inactive entry shows it."""
    w = torch.randn(layout.shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    if poison_outside:
        w = torch.where(layout.to_mask().to(device), w, POISON)
    return w


def assert_close_to_reference(actual, expected64, low_precision_ref=None, name="value"):
    """Compare ``actual`` with an fp64 reference.

    fp32/fp64: the fixed table. fp16/bf16: the error may be at most twice that of
    ``low_precision_ref`` (torch's own computation in that dtype) against the same
    fp64 reference, plus one ulp of the largest entry for when torch's error is ~0.
    """
    assert actual.shape == expected64.shape, f"{name}: shape {actual.shape} != {expected64.shape}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite entries (unwritten or poisoned)"
    dtype = actual.dtype
    if dtype in TOLERANCES:
        # Relative to each entry, and to the output's magnitude for entries near zero
        # (their error comes from the sum's other, larger terms).
        rtol, atol = TOLERANCES[dtype]
        scale = max(1.0, expected64.abs().max().item()) if expected64.numel() else 1.0
        torch.testing.assert_close(actual.double(), expected64, rtol=rtol, atol=atol * scale,
                                   msg=lambda m: f"{name}: {m}")
        return
    assert_within_twice_torch(actual, expected64, low_precision_ref, torch.finfo(dtype).eps, name)


TF32_EPS = 2.0 ** -10  # TF32 keeps 10 mantissa bits


def assert_within_twice_torch(actual, expected64, torch_result, eps, name="value"):
    """The low-precision bar: the error against ``expected64`` may be at most twice that of
    ``torch_result`` (torch's own computation in that precision), plus one ulp (``eps``) of
    the largest entry for when torch's error is ~0."""
    assert torch_result is not None, "low precision needs torch's own result in that precision"
    assert torch.isfinite(actual).all(), f"{name}: non-finite entries (unwritten or poisoned)"
    err = (actual.double() - expected64).abs().max().item() if actual.numel() else 0.0
    ref_err = (torch_result.double() - expected64).abs().max().item() if actual.numel() else 0.0
    scale = expected64.abs().max().item() if expected64.numel() else 0.0
    floor = eps * scale
    assert err <= 2 * ref_err + floor, f"{name}: error {err:.3g} > 2 x torch's {ref_err:.3g} (+{floor:.2g})"


@pytest.fixture
def ieee_fp32():
    """CUDA fp32 matmuls in IEEE precision (the fp32 bar); TF32 is tested separately."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)

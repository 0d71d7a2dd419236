"""sparsekern's linear layer, side by side with dense F.linear and torch's sparse peers.

Two sets of cases, each implementation of a case in the same pytest-benchmark group:

* the headline sweep (``sparsekern.bench.cases.headline``): every sparsekern backend that
  can run the device (dense and the peers are in test_bench_peers.py, same groups);
* on a CPU, the cpu backend's targets: x[2048, 4096] @ W[4096, 4096].T in fp32 --
  forward at block 32 (density 1/16 and 1/4), 16 and 64 (density 1/16), and the backward
  (input gradient + weight gradient on the active blocks) at block 32, density 1/16 --
  plus the forward and backward in bf16 (AMX tiles where the CPU has them), with dense
  F.linear, torch's BSR weight in F.linear and CSR through torch.sparse.mm, all measured
  in this run. The summary at the end (benchmarks/conftest.py) prints each
  one's speed-up over dense next to the ideal 1/density, with the CPU and thread count.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_linear.py`` (``-k target`` for the
CPU targets only). Every result is checked against the fp64 reference before timing.
"""

import pytest
import torch

from sparsekern.block.backends import backend_names, get_backend
from sparsekern.bench import impls
from sparsekern.bench.cases import ELEMENT, Case, Shape
from sparsekern.bench.suite import bench_device, case_id, headline_cases, prepare, run


def _sparsekern_backends(device: torch.device) -> list[str]:
    names = []
    for name in backend_names():
        if name == "reference":
            continue
        if get_backend(name).reasons(device, torch.float32, (32, 32)):
            continue
        if device.type == "cpu" and not get_backend(name).automatic(device):
            continue  # the Triton interpreter on a CPU: for checking, not for timing
        names.append(name)
    return names


DEVICE = bench_device()
BACKENDS = _sparsekern_backends(DEVICE)

TARGET_SHAPE = Shape(2048, 4096, 4096)
TARGETS = [
    Case("forward", TARGET_SHAPE, (32, 32), 1 / 16, "fp32"),
    Case("forward", TARGET_SHAPE, (32, 32), 1 / 4, "fp32"),
    Case("forward", TARGET_SHAPE, (16, 16), 1 / 16, "fp32"),
    Case("forward", TARGET_SHAPE, (64, 64), 1 / 16, "fp32"),
    Case("backward", TARGET_SHAPE, (32, 32), 1 / 16, "fp32"),
    Case("forward", TARGET_SHAPE, (32, 32), 1 / 16, "bf16"),
    Case("backward", TARGET_SHAPE, (32, 32), 1 / 16, "bf16"),
] if DEVICE.type == "cpu" else []

# The element format's targets (issue 11): x[2048, 2048] @ W[8192, 2048].T in fp32, the forward
# and forward + backward at densities 1/16, 1/64 and 1/256, against dense and torch CSR.
ELEMENT_SHAPE = Shape(2048, 8192, 2048)
ELEMENT_TARGETS = [Case(pass_, ELEMENT_SHAPE, ELEMENT, density, "fp32")
                   for pass_ in ("forward", "forward+backward") for density in (1 / 16, 1 / 64, 1 / 256)
                   ] if DEVICE.type == "cpu" else []


@pytest.mark.skipif(not BACKENDS, reason=f"no sparsekern backend can time {DEVICE.type} tensors here")
@pytest.mark.parametrize("backend", BACKENDS or ["none"])
@pytest.mark.parametrize("case", headline_cases(), ids=case_id)
def test_linear(benchmark, device, case, backend):
    impl = impls.Sparsekern(backend)
    fn, problem = prepare(case, impl, device)
    run(benchmark, case, backend, fn, problem, device)


@pytest.mark.skipif(not TARGETS, reason="the cpu backend's targets are CPU cases")
@pytest.mark.parametrize("impl_name", ["dense", *BACKENDS, "torch-bsr", "torch-csr"])
@pytest.mark.parametrize("case", TARGETS or [None], ids=lambda c: "target-" + case_id(c) if c else "none")
def test_target(benchmark, device, case, impl_name):
    impl = impls.by_name(impl_name)
    fn, problem = prepare(case, impl, device)
    run(benchmark, case, impl_name, fn, problem, device, rounds=7)


@pytest.mark.skipif(not ELEMENT_TARGETS, reason="the element format's targets are CPU cases")
@pytest.mark.parametrize("impl_name", ["dense", "cpu", "torch-csr"])
@pytest.mark.parametrize("case", ELEMENT_TARGETS or [None], ids=lambda c: "element-" + case_id(c) if c else "none")
def test_element_target(benchmark, device, case, impl_name):
    impl = impls.by_name(impl_name)
    fn, problem = prepare(case, impl, device)
    run(benchmark, case, impl_name, fn, problem, device, rounds=5)

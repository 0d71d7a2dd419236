"""Top-k projection of one 4096 x 4096 fp32 matrix, k = numel / 64, element mode, against the
plain-torch path (torch.topk on the flattened magnitudes + index scatter + masking: the
baseline of ``sparsekern-bench``'s projection pass, ``sparsekern.bench.projection.torch_topk_``).

Both run side by side in one process, interleaved (``sparsekern.bench.timing``), on the same
weight restored (untimed) before every call; the ratio of medians is saved in extra_info and
printed. The results are checked equal first. ``pytest benchmarks/test_bench_projection.py -s``.
"""

import pytest
import torch

import sparsekern
from sparsekern.bench.machine import _cpu_model
from sparsekern.bench.projection import torch_topk_
from sparsekern.bench.timing import time_interleaved

SHAPE = (4096, 4096)
REPEATS = 15


@pytest.fixture(scope="module")
def problem(device):
    weight = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    return weight, weight.numel() // 64


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_projection_speedup_over_torch_topk(benchmark, device, problem, backend):
    weight, k = problem
    if backend not in sparsekern.projection_backends(device, weight.dtype):
        pytest.skip(f"projection backend {backend!r} cannot run {device} tensors here")
    if backend == "triton" and device.type != "cuda":
        pytest.skip("the Triton interpreter is for checking, not for speed")
    work = weight.clone()
    fns = {
        "torch-topk": lambda i: torch_topk_(work, k, "element", None),
        "sparsekern": lambda i: sparsekern.topk_project_(work, k, backend=backend),
    }
    expected = fns["torch-topk"](0).clone()
    work.copy_(weight)
    fns["sparsekern"](0)
    assert torch.equal(work, expected), "the fused projection differs from the torch path"

    restore = lambda i: work.copy_(weight)  # noqa: E731
    times = time_interleaved(fns, device, repeats=REPEATS, warmup=1, setups={name: restore for name in fns})
    base, fused = times["torch-topk"]["median_s"], times["sparsekern"]["median_s"]
    machine = _cpu_model() if device.type == "cpu" else torch.cuda.get_device_name()
    benchmark.group = f"topk projection {SHAPE[0]}x{SHAPE[1]} fp32 k=n/64 element"
    benchmark.extra_info.update(backend=backend, torch_topk_median_s=base, fused_median_s=fused,
                                speedup_over_torch_topk=base / fused, machine=machine,
                                threads=torch.get_num_threads(), torch=torch.__version__)
    print(f"\n{backend}: torch.topk path {base * 1e3:.1f} ms, fused {fused * 1e3:.1f} ms: {base / fused:.1f}x "
          f"({machine}, {torch.get_num_threads()} threads)")
    # pytest-benchmark's own table: the fused projection alone, on the restored weight each round.
    benchmark.pedantic(fns["sparsekern"], setup=lambda: ((restore(0),), {}), rounds=REPEATS, warmup_rounds=1)


INDEX_SHAPE = (8192, 2048)  # the MLP matrix of the published models' default width


@pytest.mark.parametrize("density", [1 / 16, 1 / 64, 1 / 256, 1 / 1024])
def test_projection_with_its_element_index(benchmark, device, density):
    """The projection alone against the projection that also lists the element layout of what
    it kept (what SparseLinear's element and auto formats run each step): the ratio is the
    cost of keeping an element layout in sync, target at most 1.5."""
    from sparsekern.projection.topk_project import prepare_projection

    weight = torch.randn(INDEX_SHAPE, generator=torch.Generator().manual_seed(1)).to(device)
    k = sparsekern.count_for_density(density, weight.numel())
    work = weight.clone()
    fns = {
        "projection": lambda i: prepare_projection(work, k).apply(),
        "projection+index": lambda i: prepare_projection(work, k, element_layout=True).apply(),
    }
    layout = fns["projection+index"](0).element_layout
    assert layout == sparsekern.ElementLayout.from_weight(work), "the listed index differs from the weight's"
    restore = lambda i: work.copy_(weight)  # noqa: E731
    times = time_interleaved(fns, device, repeats=REPEATS, warmup=1, setups={name: restore for name in fns})
    alone, with_index = times["projection"]["median_s"], times["projection+index"]["median_s"]
    machine = _cpu_model() if device.type == "cpu" else torch.cuda.get_device_name()
    benchmark.group = f"projection + element index {INDEX_SHAPE[0]}x{INDEX_SHAPE[1]}"
    benchmark.extra_info.update(density=density, projection_median_s=alone, with_index_median_s=with_index,
                                ratio=with_index / alone, machine=machine, threads=torch.get_num_threads())
    print(f"\ndensity {density:.5f}: projection {alone * 1e3:.1f} ms, with its index {with_index * 1e3:.1f} ms: "
          f"{with_index / alone:.2f}x ({machine}, {torch.get_num_threads()} threads)")
    benchmark.pedantic(fns["projection+index"], setup=lambda: ((restore(0),), {}), rounds=5, warmup_rounds=1)

"""Top-k projection of one 4096 x 4096 fp32 matrix, k = numel / 64, element mode, against the
plain-torch path (torch.topk on the flattened magnitudes + index scatter + masking).

Both run side by side in one process, alternating, on the same weight restored (untimed)
before every call; the ratio of medians is saved in extra_info and printed. The results
are checked equal first. ``pytest benchmarks/test_bench_projection.py``.
"""

import statistics
import time

import pytest
import torch

import sparsekern
from sparsekern.bench.machine import _cpu_model

SHAPE = (4096, 4096)
REPEATS = 15


def torch_topk_path_(weight: torch.Tensor, k: int) -> None:
    flat = weight.view(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=weight.device)
    keep[torch.topk(flat.abs(), k).indices] = True
    flat.masked_fill_(~keep, 0)


@pytest.fixture(scope="module")
def problem(device):
    weight = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    return weight, weight.numel() // 64


def _timed(fn, original, work, device) -> float:
    work.copy_(original)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn(work)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_projection_speedup_over_torch_topk(benchmark, device, problem, backend):
    weight, k = problem
    if backend not in sparsekern.projection_backends(device, weight.dtype):
        pytest.skip(f"projection backend {backend!r} cannot run {device} tensors here")
    if backend == "triton" and device.type != "cuda":
        pytest.skip("the Triton interpreter is for checking, not for speed")
    ours = lambda w: sparsekern.topk_project_(w, k, backend=backend)  # noqa: E731
    work = weight.clone()
    torch_topk_path_(work, k)
    expected = work.clone()
    ours(work.copy_(weight))
    assert torch.equal(work, expected), "the fused projection differs from the torch path"

    for fn in (torch_topk_path_, ours):  # warm-up
        _timed(lambda w: fn(w, k) if fn is torch_topk_path_ else fn(w), weight, work, device)
    base, fused = [], []
    for _ in range(REPEATS):  # alternate, so both see the same machine load
        base.append(_timed(lambda w: torch_topk_path_(w, k), weight, work, device))
        fused.append(_timed(ours, weight, work, device))
    ratio = statistics.median(base) / statistics.median(fused)
    benchmark.group = f"topk projection {SHAPE[0]}x{SHAPE[1]} fp32 k=n/64 element"
    benchmark.extra_info.update(
        backend=backend, torch_topk_median_s=statistics.median(base), fused_median_s=statistics.median(fused),
        speedup_over_torch_topk=ratio, machine=_cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(),
        threads=torch.get_num_threads(), torch=torch.__version__,
    )
    print(f"\n{backend}: torch.topk path {statistics.median(base) * 1e3:.1f} ms, fused "
          f"{statistics.median(fused) * 1e3:.1f} ms: {ratio:.1f}x ({_cpu_model()}, {torch.get_num_threads()} threads)")
    benchmark.pedantic(ours, setup=lambda: ((work.copy_(weight),), {}), rounds=REPEATS, warmup_rounds=1)

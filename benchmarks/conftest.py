"""pytest-benchmark suite: ``pytest benchmarks/``. Helpers live in ``sparsekern.bench.suite``."""

import pytest
import torch

from sparsekern.bench.suite import bench_device


@pytest.fixture(scope="session")
def device() -> torch.device:
    return bench_device()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Each implementation's speed-up over dense F.linear (medians of this run), by case."""
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b and b.extra_info.get("impl")]
    if not benchmarks:
        return
    from sparsekern.bench.machine import describe

    info = describe(bench_device())
    tr = terminalreporter
    tr.section("speed-up over dense (median times, same run)")
    tr.write_line(f"cpu: {info['cpu']}, {info['cpu_count']} cores, torch threads: {info['threads']}, "
                  f"torch {info['torch']}")
    groups: dict[str, list] = {}
    for b in benchmarks:
        groups.setdefault(b.group, []).append(b)
    for group, items in groups.items():
        dense = next((b for b in items if b.extra_info["impl"] == "dense"), None)
        if dense is None:
            continue
        ideal = items[0].extra_info.get("ideal_speedup")
        parts = [f"{b.extra_info['impl']} {dense.stats.median / b.stats.median:.2f}x"
                 for b in items if b is not dense]
        tr.write_line(f"{group}: " + ", ".join(parts) + (f"  (ideal {ideal:.1f}x)" if ideal else ""))

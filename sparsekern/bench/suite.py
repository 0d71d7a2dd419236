"""Helpers for the pytest-benchmark suite in ``benchmarks/`` (``pytest benchmarks/``).

The cases are the headline sweep of ``sparsekern-bench`` (``cases.headline``) and the
implementations the CLI's own (``impls``): dense ``F.linear``, sparsekern's backends,
torch's BSR and CSR paths. Every benchmark checks its result against the fp64 reference
once before timing, as the CLI does.

``group_of`` puts every implementation of one case in the same pytest-benchmark group,
so they print side by side; every file in ``benchmarks/`` should use it.
"""

from __future__ import annotations

import torch

from . import cases as bench_cases
from . import impls as bench_impls


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def headline_cases(passes=("forward", "backward", "forward+backward")) -> list[bench_cases.Case]:
    """The CLI's default sweep, the projection pass aside."""
    return [c for c in bench_cases.headline(bench_device()).cases() if c.pass_ in passes]


def case_id(case: bench_cases.Case) -> str:
    return f"{case.pass_}-{case.dtype}-{case.shape}-{case.block[0]}x{case.block[1]}-d{case.density:g}"


def group_of(case: bench_cases.Case) -> str:
    return case_id(case)


def prepare(case: bench_cases.Case, impl: bench_impls.Impl, device: torch.device, seed: int = 0):
    """``(fn(i), problem)`` for ``impl`` on ``case``, its result checked against fp64 first.

    Skips (with torch's reason) where the implementation cannot run the case.
    """
    import pytest

    problem = bench_impls.make_problem(case, device, bench_impls.input_sets(case, device), seed)
    try:
        state = impl.prepare(problem, case)
        fn = bench_impls.pass_callable(impl, state, problem, case.pass_)
        first = fn(0)
    except bench_impls.NotAvailable as why:
        pytest.skip(f"{impl.name}: {why}")
    except (RuntimeError, NotImplementedError) as err:
        if impl.kind != "peer":
            raise
        pytest.skip(f"{impl.name} not implemented by torch here: {' '.join(str(err).split())[:200]}")
    errors = bench_impls.relative_errors(impl, problem, case.pass_, first)
    if impl.kind != "dense":
        dense = bench_impls.Dense()
        dense_fn = bench_impls.pass_callable(dense, dense.prepare(problem, case), problem, case.pass_)
        dense_error = max(bench_impls.relative_errors(dense, problem, case.pass_, dense_fn(0)).values())
    else:
        dense_error = None
    tol = bench_impls.tolerance(bench_cases.DTYPES[case.dtype], dense_error)
    assert max(errors.values()) <= tol, f"{impl.name} on {case_id(case)}: errors {errors} > {tol:.2e}"
    return fn, problem


def run(benchmark, case: bench_cases.Case, impl_name: str, fn, problem, device: torch.device, rounds: int = 5):
    """Time ``fn`` with pytest-benchmark (synchronised on a GPU); useful work in extra_info."""
    benchmark.group = group_of(case)
    nnz = problem.nnz_elements
    density = nnz / (case.shape.n * case.shape.k)
    benchmark.extra_info.update(
        impl=impl_name, pass_=case.pass_, dtype=case.dtype, shape=str(case.shape), block=list(case.block),
        density=case.density, nnz_elements=nnz, ideal_speedup=1 / density,
        useful_flops=bench_cases.useful_flops(case.pass_, case.shape.m, nnz), threads=torch.get_num_threads(),
    )
    counter = iter(range(1 << 62))

    def call():
        fn(next(counter))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)

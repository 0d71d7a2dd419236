"""Running a sweep: every case, every implementation that can run it, side by side."""

from __future__ import annotations

import torch

from . import projection
from .cases import DTYPES, ELEMENT, Case, Sweep, matmul_mode, useful_flops
from .impls import NotAvailable, Problem, implementations, input_sets, make_problem, memory_floor, pass_callable
from .impls import relative_errors, tolerance
from .optional import optional_module
from .timing import time_interleaved


def _base_row(case: Case, name: str, kind: str) -> dict:
    bo, bi = case.block
    return {"pass": case.pass_, "impl": name, "kind": kind, "dtype": case.dtype,
            "m": case.shape.m, "n": case.shape.n, "k": case.shape.k,
            "block": "element" if case.block == ELEMENT else f"{bo}x{bi}",
            "block_out": bo, "block_in": bi, "density": case.density,
            "status": "ok", "note": "", "verified": False, "rel_error": None, "tolerance": None,
            "time_ms": None, "min_ms": None, "max_ms": None, "samples": 0,
            "tflops": None, "speedup": None, "ideal": None, "floor_ms": None, "roofline": None,
            "of_roofline": None}


def _finish(rows: list[dict], timings: dict, baseline: str, flops: int) -> None:
    """Times, useful TFLOP/s and speedup over the baseline, for the rows that ran."""
    base = timings.get(baseline, {}).get("median_s")
    for row in rows:
        t = timings.get(row["impl"])
        if t is None:
            continue
        row.update(time_ms=t["median_s"] * 1e3, min_ms=t["min_s"] * 1e3, max_ms=t["max_s"] * 1e3,
                   samples=t["samples"])
        if flops:
            row["tflops"] = flops / t["median_s"] / 1e12
        if base:
            row["speedup"] = base / t["median_s"]


def run_linear_case(case: Case, backends, peers, device, repeats, warmup, seed, budget_s=None) -> list[dict]:
    with matmul_mode(case.dtype):
        return _run_linear_case(case, backends, peers, device, repeats, warmup, seed, budget_s)


def _run_linear_case(case: Case, backends, peers, device, repeats, warmup, seed, budget_s) -> list[dict]:
    problem: Problem = make_problem(case, device, input_sets(case, device), seed)
    layout = problem.layout
    nnz_el = problem.nnz_elements
    element_density = nnz_el / (case.shape.n * case.shape.k)
    flops = useful_flops(case.pass_, case.shape.m, nnz_el)
    dtype = DTYPES[case.dtype]
    rows, fns, dense_error = [], {}, None
    for impl in implementations(backends, peers):
        row = _base_row(case, impl.name, impl.kind)
        row.update(nnz_blocks=getattr(layout, "nnz_blocks", None), block_density=layout.density,
                   element_density=element_density,
                   nnz_elements=nnz_el, useful_flops=flops,
                   ideal=(1 / element_density) if element_density else None)
        rows.append(row)
        try:
            state = impl.prepare(problem, case)
            fn = pass_callable(impl, state, problem, case.pass_)
            errors = relative_errors(impl, problem, case.pass_, fn(0))  # checked once, before timing
        except NotAvailable as err:
            row.update(status="n/a", note=str(err))
            continue
        except Exception as err:  # noqa: BLE001 -- one failing implementation must not end the sweep
            # torch's sparse paths lack many devices, dtypes and passes: not available. A sparsekern
            # backend (or dense) failing on a case it claims to support is a bug: ERROR, exit status 1.
            status = "n/a" if impl.kind == "peer" else "ERROR"
            row.update(status=status, note=f"{type(err).__name__}: {_first_line(err)}")
            continue
        worst = max(errors.values())
        if impl.kind == "dense":
            dense_error = worst
        tol = tolerance(dtype, dense_error)
        row.update(rel_error=worst, tolerance=tol, verified=worst <= tol)
        if not row["verified"]:
            row.update(status="WRONG", note=", ".join(f"{k} rel. error {v:.2e}" for k, v in errors.items()))
            continue
        fns[impl.name] = fn
    if fns:
        fns[FLOOR] = memory_floor(problem, case.pass_)
    timings = time_interleaved(fns, device, repeats=repeats, warmup=warmup, budget_s=budget_s) if fns else {}
    _finish(rows, timings, "dense", flops)
    _roofline(rows, timings, element_density)
    return rows


FLOOR = "memory-floor"  # reads the pass's inputs and writes its outputs once, nothing else


def _roofline(rows: list[dict], timings: dict, density: float) -> None:
    """The roofline of the case: ``max(density * dense time, memory floor)``; per row the
    speedup over dense it allows (``roofline``) and the share of it reached (``of_roofline``)."""
    dense, floor = timings.get("dense"), timings.get(FLOOR)
    if not dense or not floor:
        return
    roof_s = max(density * dense["median_s"], floor["median_s"])
    for row in rows:
        row.update(floor_ms=floor["median_s"] * 1e3, roofline=dense["median_s"] / roof_s)
        if row["time_ms"]:
            row["of_roofline"] = roof_s * 1e3 / row["time_ms"]


def run_projection_case(case: Case, backends, device, repeats, warmup, seed, budget_s=None) -> list[dict]:
    rows, fns, setups = [], {}, {}
    for name, kind, fn, setup, check in projection.callables(case, device, backends, seed):
        row = _base_row(case, name, kind)
        rows.append(row)
        try:
            mismatch = projection.probe(check)
        except NotAvailable as err:  # a backend may not project this dtype or device; the baseline must
            row.update(status="n/a" if kind != "baseline" else "ERROR", note=str(err))
            continue
        except Exception as err:  # noqa: BLE001 -- a failing backend is a bug to report, not the end
            row.update(status="ERROR", note=f"{type(err).__name__}: {_first_line(err)}")
            continue
        row.update(rel_error=mismatch, tolerance=0.0, verified=mismatch == 0.0)
        if not row["verified"]:
            row.update(status="WRONG", note=f"{mismatch:.2%} of entries differ from torch's top-k")
            continue
        fns[name], setups[name] = fn, setup
    timings = (time_interleaved(fns, device, repeats=repeats, warmup=warmup, setups=setups, budget_s=budget_s)
               if fns else {})
    _finish(rows, timings, "torch-topk", 0)
    return rows


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())  # pybind11 and torch spread their messages over lines
    return text[:300]


def run_sweep(sweep: Sweep, *, backends, peers, projection_backends, device, seed=0, progress=True) -> list[dict]:
    rows = []
    cases = sweep.cases()
    tqdm = optional_module("tqdm", "no progress bar") if progress else None
    bar = (tqdm.tqdm(cases, desc="sparsekern-bench", unit="case", dynamic_ncols=True) if tqdm
           else _NoProgressBar(cases))
    with bar:
        try:
            _run_cases(bar, rows, backends, peers, projection_backends, device, sweep, seed)
        except KeyboardInterrupt:
            raise SweepInterrupted(rows, len(cases)) from None
    return rows


class _NoProgressBar:
    """What ``_run_cases`` uses of a tqdm bar, showing nothing (--no-progress, or no tqdm)."""

    def __init__(self, cases):
        self._cases = cases

    def __iter__(self):
        return iter(self._cases)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def set_postfix_str(self, text: str) -> None:
        pass


class SweepInterrupted(Exception):
    """Ctrl-C (or gpu-check's time limit) during a sweep: ``rows`` of the cases finished."""

    def __init__(self, rows: list[dict], total: int):
        super().__init__(f"interrupted after {len({_case_key(r) for r in rows})} of {total} cases")
        self.rows = rows


def _case_key(row: dict) -> tuple:
    return row["pass"], row["dtype"], row["m"], row["n"], row["k"], row["block"], row["density"]


def _run_cases(bar, rows, backends, peers, projection_backends, device, sweep, seed) -> None:
    """Each case in turn, its rows appended to ``rows`` as soon as it is done."""
    for i, case in enumerate(bar):
        bar.set_postfix_str(f"{case.pass_} {case.dtype} {case.shape} {case.block[0]}x{case.block[1]} "
                            f"d={case.density:g}")
        if case.pass_ == "projection":
            rows += run_projection_case(case, projection_backends, device, sweep.repeats, sweep.warmup,
                                        seed + i, sweep.budget_s)
        else:
            rows += run_linear_case(case, backends, peers, device, sweep.repeats, sweep.warmup, seed + i,
                                    sweep.budget_s)
        if device.type == "cuda":
            torch.cuda.empty_cache()

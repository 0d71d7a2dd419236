"""Timing implementations side by side.

Every implementation of a case is timed in the same loop, interleaved: repeat ``r``
runs each of them once, in an order rotated by ``r``, so drift on a noisy, shared
machine (other jobs, frequency changes) hits them all alike. The figure is the median.

* CPU: ``time.perf_counter`` around enough calls to last ``min_sample_s`` (the count is
  set from the warm-up), after the warm-up; torch's thread count is recorded by the caller.
* CUDA: CUDA events around each call, after an L2 flush (writing a buffer larger than
  the cache), so no implementation finds its operands already cached; the callables
  also rotate through several input sets.

A callable takes the call counter ``i`` (to pick input set ``i % n``); an optional
``setup(i)`` runs untimed before each call (e.g. to restore a weight a projection
changed in place).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

Fn = Callable[[int], object]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict[str, Fn], device: torch.device, *, repeats: int, warmup: int,
                     setups: dict[str, Fn] | None = None, min_sample_s: float = 2e-3,
                     budget_s: float | None = None, min_repeats: int = 3) -> dict[str, dict]:
    """``name -> {"median_s", "min_s", "max_s", "samples"}`` for each callable in ``fns``.

    ``budget_s`` (CPU): an implementation whose timed samples add up to more than this
    stops after ``min_repeats`` samples (so a slow peer does not stretch the sweep);
    ``samples`` says how many it got.
    """
    setups = setups or {}
    names = list(fns)
    counter = {name: 0 for name in names}

    def prepare(name: str) -> int:
        """The next call index, after the untimed setup for it."""
        i = counter[name]
        counter[name] += 1
        if name in setups:
            setups[name](i)
        return i

    # Warm-up (compilation, caches, autotuning), and from it the calls per CPU sample.
    inner = {}
    for name in names:
        elapsed = 0.0
        for _ in range(max(warmup, 1)):
            i = prepare(name)
            _sync(device)
            t0 = time.perf_counter()
            fns[name](i)
            _sync(device)
            elapsed = time.perf_counter() - t0
        cpu_batch = device.type != "cuda" and name not in setups
        inner[name] = max(1, int(min_sample_s / max(elapsed, 1e-9))) if cpu_batch else 1

    samples = {name: [] for name in names}
    if device.type == "cuda":
        _time_cuda(names, fns, prepare, samples, repeats, device)
    else:
        spent = {name: 0.0 for name in names}
        for r in range(repeats):
            for j in range(len(names)):
                name = names[(j + r) % len(names)]
                if budget_s is not None and len(samples[name]) >= min_repeats and spent[name] > budget_s:
                    continue
                if inner[name] == 1:
                    i = prepare(name)
                    t0 = time.perf_counter()
                    fns[name](i)
                else:
                    t0 = time.perf_counter()
                    for _ in range(inner[name]):
                        fns[name](prepare(name))
                elapsed = time.perf_counter() - t0
                spent[name] += elapsed
                samples[name].append(elapsed / inner[name])
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "samples": len(s)}
        for name, s in samples.items()
    }


_FLUSH: dict[torch.device, torch.Tensor] = {}


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    if device not in _FLUSH:
        props = torch.cuda.get_device_properties(device)
        size = max(256 << 20, 4 * getattr(props, "L2_cache_size", 0))
        _FLUSH[device] = torch.empty(size, dtype=torch.int8, device=device)
    return _FLUSH[device]


def _time_cuda(names, fns, prepare, samples, repeats, device) -> None:
    flush = _l2_flush_buffer(device)
    events = []
    for r in range(repeats):
        for j in range(len(names)):
            name = names[(j + r) % len(names)]
            i = prepare(name)  # untimed: queued before the start event
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            flush.zero_()
            start.record()
            fns[name](i)
            end.record()
            events.append((name, start, end))
    torch.cuda.synchronize(device)
    for name, start, end in events:
        samples[name].append(start.elapsed_time(end) / 1e3)

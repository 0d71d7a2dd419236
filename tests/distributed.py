"""Run a function on N CPU processes joined by gloo, for the distributed tests.

``run_on_ranks(fn, world_size, *args)`` spawns ``world_size`` fresh processes, each of which
joins one process group (gloo, a file rendezvous, so no port can clash), runs
``fn(rank, world_size, *args)`` with one torch thread, and sends back what it returns (it
must pickle; tensors included). The caller gets the list of results in rank order, or an AssertionError
carrying the traceback of every rank that raised; a rank stuck in a collective (the others
having failed or hung) is killed after ``timeout`` seconds, so a test can never hang.
``fn`` must be importable by name (a module-level function), as spawn requires.
"""

from __future__ import annotations

import os
import pickle
import queue
import tempfile
import traceback

import torch.multiprocessing as mp


def _worker(rank, world_size, init_file, results, fn, args):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        try:
            # Pickled here: a tensor put on the queue as it is travels as a shared-memory handle,
            # gone once this process exits.
            results.put((rank, True, pickle.dumps(fn(rank, world_size, *args))))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_on_ranks(fn, world_size: int, *args, timeout: float = 120.0) -> list:
    context = mp.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        processes = [context.Process(target=_worker, args=(rank, world_size, init_file, results, fn, args))
                     for rank in range(world_size)]
        for p in processes:
            p.start()
        got, failures = {}, []
        try:
            while len(got) + len(failures) < world_size:
                try:
                    # Once a rank failed, the others may be stuck in a collective: do not wait long.
                    rank, ok, value = results.get(timeout=timeout if not failures else 10.0)
                except queue.Empty:
                    missing = sorted(set(range(world_size)) - set(got) - {r for r, _ in failures})
                    failures.append((-1, f"ranks {missing} gave no result within {timeout} s (hung?)"))
                    break
                if ok:
                    got[rank] = pickle.loads(value)
                else:
                    failures.append((rank, value))
        finally:
            for p in processes:
                p.join(timeout=5 if not failures else 1)
                if p.is_alive():
                    p.kill()
                    p.join()
    if failures:
        raise AssertionError("\n".join(f"rank {rank}:\n{text}" for rank, text in sorted(failures)))
    return [got[rank] for rank in range(world_size)]

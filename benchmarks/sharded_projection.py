"""Time of one exact top-k projection of a sharded weight against one process (issue #14).

An fp32 8192 x 2048 weight, element mode, k = numel / 64, a floor of 4 per row, the
``ElementLayout`` asked for (what a ``SparseLinear`` asks): the normal path in one process
(the automatic backend, ``cpu``), then ``Shard(0)`` on 2 and 4 CPU processes joined by gloo.
Every process has one torch thread; the time is rank 0's wall time of prepare + apply, the
median of ``--repeats`` after a warm-up, each on the same weight restored (untimed) and after
a barrier. Run it on a quiet machine (``OMP_NUM_THREADS=1``):

    OMP_NUM_THREADS=1 python benchmarks/sharded_projection.py [--shape 8192 2048] [--ranks 2 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _problem(shape):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return weight, weight.numel() // 64


def _time(project, restore, repeats: int, barrier=None) -> list[float]:
    times = []
    for i in range(repeats + 1):  # the first is the warm-up
        restore()
        if barrier is not None:
            barrier()
        start = time.perf_counter()
        project()
        if i:
            times.append(time.perf_counter() - start)
    return times


def single_process(shape, repeats: int) -> float:
    from sparsekern.projection import prepare_projection

    torch.set_num_threads(1)
    whole, k = _problem(shape)
    weight = whole.clone()
    times = _time(lambda: prepare_projection(weight, k, min_per_row=4, element_layout=True).apply(),
                  lambda: weight.copy_(whole), repeats)
    return statistics.median(times)


def _rank(rank, world, init_file, shape, repeats, results):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from sparsekern.projection import prepare_projection, sharded

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        whole, k = _problem(shape)
        weight = distribute_tensor(whole, mesh, [Shard(0)], src_data_rank=None)
        saved = weight.to_local().clone()
        times = _time(lambda: prepare_projection(weight, k, min_per_row=4, element_layout=True).apply(),
                      lambda: weight.to_local().copy_(saved), repeats, dist.barrier)
        communication = sharded.last_communication()
        if rank == 0:
            results.put((statistics.median(times), communication.rounds, communication.bytes_sent))
    finally:
        dist.destroy_process_group()


def sharded_processes(shape, world: int, repeats: int):
    context = mp.get_context("spawn")
    results = context.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        processes = [context.Process(target=_rank, args=(rank, world, os.path.join(tmp, "rendezvous"), shape,
                                                         repeats, results)) for rank in range(world)]
        for p in processes:
            p.start()
        result = results.get(timeout=600)
        for p in processes:
            p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(8192, 2048))
    parser.add_argument("--ranks", type=int, nargs="+", default=(2, 4))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    shape = tuple(args.shape)
    print(f"fp32 {shape[0]} x {shape[1]}, k = numel / 64, min_per_row = 4, element layout; one torch thread "
          f"a process; median of {args.repeats}; torch {torch.__version__}; load {os.getloadavg()[0]:.2f}")
    alone = single_process(shape, args.repeats)
    print(f"1 process (unsharded, automatic backend): {alone * 1e3:.1f} ms")
    for world in args.ranks:
        median, rounds, sent = sharded_processes(shape, world, args.repeats)
        print(f"{world} processes, Shard(0): {median * 1e3:.1f} ms ({alone / median:.2f}x one process); "
              f"{rounds} collectives, {sent} bytes sent by each rank")


if __name__ == "__main__":
    main()

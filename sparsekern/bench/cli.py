"""``sparsekern-bench`` (also ``python -m sparsekern.bench``): the command line.

With no arguments: pick the device, run the headline sweep, print one table per pass
and save JSON, CSV and a PNG plot under ``bench-results/``. See ``--help``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from .cases import DTYPES, PASSES, BenchInputError
from .impls import DEFAULT_PEERS, PEERS, peer_name

PROG = "sparsekern-bench"
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=(
        "Benchmark sparsekern's block-sparse linear layer against dense F.linear (cuBLAS / MKL-oneDNN) and "
        "torch's sparse paths (BSR weight in F.linear, CSR through torch.sparse.mm), and, for the element format, "
        "SparseProp's SparseLinear where it is installed. Every backend that can "
        "run on the device is timed side by side with dense; each result is checked against an fp64 "
        "reference before timing."))
    p.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--full", action="store_true", help="the large sweep instead of the headline one")
    p.add_argument("--format", choices=("block", "element"), default="block",
                   help="block (default: the headline or --full sweep) or element (weights sparse entry by entry: "
                        "x[2048, 2048] @ W[8192, 2048].T on a CPU at densities 1/16 to 1/1024)")
    p.add_argument("--backends", help="comma-separated sparsekern backends (default: every one that can run "
                                      "here, the Triton interpreter excepted)")
    p.add_argument("--peers",
                   help="peers, comma-separated from bsr, csr (torch's BSR and CSR paths) and sparseprop "
                        "(SparseProp's SparseLinear, CPU fp32, optional: make bench-peers), or none "
                        "(default: bsr,csr; with --format element also sparseprop, n/a where not installed)")
    p.add_argument("--passes", help=f"comma-separated, from {', '.join(PASSES)}")
    p.add_argument("--dtypes", help=f"comma-separated, from {', '.join(DTYPES)} (tf32: fp32 data with CUDA's "
                                    "TF32 matmul mode on for every implementation; fp32 runs IEEE)")
    p.add_argument("--shapes", help="comma-separated MxNxK: M rows of input, N out_features, K in_features")
    p.add_argument("--densities", help="comma-separated fractions of blocks kept, in (0, 1]")
    p.add_argument("--block-sizes", help="comma-separated S or OUTxIN, sides in 16, 32, 64, 128")
    p.add_argument("--repeats", type=int, help="timed repeats per implementation (median reported)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="CPU: an implementation timed for longer than this in one case stops at 3 samples "
                        "(default: 1.5 for the headline sweep, 5 for --full; 0: no limit)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", metavar="OLD.json", help="also print, row by row, old/new time against a saved run")
    p.add_argument("--out", default="bench-results", help="output directory (default: bench-results/)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--static", action="store_true",
                   help="no timing: registers, shared memory, spills and tensor-core instruction of every Triton "
                        "and CUDA kernel for sm_80 and sm_90a, compiled ahead of time (no GPU needed)")
    return p


def resolve_device(text: str):
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise BenchInputError(f"--device {text!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise BenchInputError(f"--device {text!r}: only cpu and cuda are benchmarked")
    if not torch.cuda.is_available():
        raise BenchInputError(f"--device {text!r}: no CUDA device here (torch.cuda.is_available() is False)")
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise BenchInputError(f"--device {text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


def resolve_backends(text: str | None, device, sweep) -> list[str]:
    """Named backends (each must be able to run on ``device``), or every one that can run some case."""
    from ..block import backends as registry
    from .cases import Case, Shape, parse_list
    from .impls import backend_reasons

    names = registry.backend_names()
    if text is None:
        chosen = []
        for name in names:
            # The Triton interpreter runs CPU tensors for checking, not for speed: only when named.
            if not registry.get_backend(name).automatic(device):
                continue
            probe = [Case("forward", Shape(1, 1, 1), b, 1.0, d) for d in sweep.dtypes for b in sweep.blocks]
            if any(not backend_reasons(name, c, device, DTYPES[c.dtype]) for c in probe):
                chosen.append(name)
        return chosen
    chosen = parse_list(text, "--backends")
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise BenchInputError(f"unknown backend {', '.join(map(repr, unknown))} (choose from {', '.join(names)})")
    for name in chosen:
        backend = registry.get_backend(name)
        why = [w for w in (backend.unavailable_reason(), backend.device_reason(device)) if w]
        if why:
            raise BenchInputError(f"backend {name!r} cannot run on {device}: {'; '.join(why)}")
    return list(dict.fromkeys(chosen))


def make_sweep(args, device):
    from . import cases

    if args.format == "element":
        if args.full or args.block_sizes:
            raise BenchInputError("--format element has no blocks: --full and --block-sizes are for the block format")
        sweep = cases.element(device)
    else:
        sweep = cases.full(device) if args.full else cases.headline(device)
    if args.passes:
        sweep.passes = cases.parse_choices(args.passes, "pass", PASSES)
    if args.dtypes:
        sweep.dtypes = cases.parse_choices(args.dtypes, "dtype", tuple(DTYPES))
        cuda_only = [d for d in sweep.dtypes if d in cases.CUDA_ONLY_DTYPES]
        if cuda_only and device.type != "cuda":
            raise BenchInputError(f"--dtypes {','.join(cuda_only)}: a CUDA matmul mode, not for {device.type}")
    if args.shapes:
        sweep.shapes = cases.parse_shapes(args.shapes)
    if args.densities:
        sweep.densities = cases.parse_densities(args.densities)
        sweep.projection_densities = None  # the densities asked for, in every pass
    if args.block_sizes:
        sweep.blocks = cases.parse_blocks(args.block_sizes)
    for opt in ("repeats", "warmup"):
        value = getattr(args, opt)
        if value is not None:
            if value < (1 if opt == "repeats" else 0):
                raise BenchInputError(f"--{opt} must be {'positive' if opt == 'repeats' else 'non-negative'}")
            setattr(sweep, opt, value)
    if args.budget is not None:
        if args.budget < 0:
            raise BenchInputError("--budget must be non-negative")
        sweep.budget_s = args.budget or None
    cases.check_fit(sweep.shapes, sweep.blocks)
    return sweep


def parse_peers(text: str | None, format: str = "block") -> list[str]:
    from .cases import parse_choices

    if text is None:
        return list(DEFAULT_PEERS[format])
    if text.strip() == "none":
        return []
    return list(dict.fromkeys(parse_choices(text, "peer", PEERS)))


def run_static(args) -> int:
    from . import static

    print("compiling every Triton and CUDA C++ kernel for sm_80 and sm_90a ahead of time "
          "(a few minutes on a small CPU the first time)...", file=sys.stderr)
    rows, messages = static.collect()
    for message in messages:
        print(message)
    if rows:
        print(static.table(rows))
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"static-{stamp}.json")
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"\nsaved {path}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except BenchInputError as err:
        parser.error(str(err))  # exits with status 2


def _main(args) -> int:
    if args.static:
        return run_static(args)
    import torch

    from . import machine, projection, report
    from .runner import SweepInterrupted, run_sweep

    if args.threads is not None:
        if args.threads < 1:
            raise BenchInputError("--threads must be positive")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sweep = make_sweep(args, device)
    peers = parse_peers(args.peers, args.format)
    backends = resolve_backends(args.backends, device, sweep)
    old = None
    if args.compare:
        try:
            old = report.load(args.compare)
        except (OSError, ValueError) as err:
            raise BenchInputError(f"--compare: cannot read {args.compare}: {err}") from None
    named = None if args.backends is None else backends
    projection_backends = (projection.backend_names(named, device, [DTYPES[d] for d in sweep.dtypes])
                           if "projection" in sweep.passes else [])
    meta = machine.describe(device)
    meta["projection_backends"] = projection_backends
    meta.update(backends=backends, peers=peers, argv=sys.argv[1:], full=args.full, seed=args.seed,
                sweep={"shapes": [str(s) for s in sweep.shapes], "densities": sweep.densities,
                       "blocks": [f"{bo}x{bi}" for bo, bi in sweep.blocks], "dtypes": sweep.dtypes,
                       "passes": sweep.passes, "repeats": sweep.repeats, "warmup": sweep.warmup,
                       "budget_s": sweep.budget_s})
    print(f"sparsekern-bench on {machine.headline(meta)}")
    busy = machine.busy_warning(meta)
    if busy:
        print(busy, file=sys.stderr)
    print(f"backends: {', '.join(backends) or 'none'}; peers: dense F.linear"
          + "".join(f", {peer_name(p)}" for p in peers)
          + (f"; projection: {', '.join(projection_backends) or 'none'} vs torch-topk"
             if "projection" in sweep.passes else "")
          + f"; {len(sweep.cases())} cases x {sweep.repeats} repeats (median, interleaved)")
    try:
        rows = run_sweep(sweep, backends=backends, peers=peers, projection_backends=projection_backends,
                         device=device, seed=args.seed, progress=not args.no_progress)
        interrupted = None
    except SweepInterrupted as err:  # save what was measured (gpu-check's time limit interrupts)
        rows, interrupted = err.rows, str(err)
        meta["interrupted"] = interrupted
        print(f"\n{PROG}: {interrupted}; saving those", file=sys.stderr)

    print()
    print(report.pass_tables(rows))
    print("\nuseful TFLOP/s counts the layout's entries only, for every implementation (dense included); "
          "x dense = dense time / time; ideal = 1 / density; roofline = dense time / max(density x dense time, "
          "memory floor), the floor being the pass's inputs read and outputs written once, measured in the same "
          "run; % roofline = the share of it reached.")
    meta["load_average_end"] = machine.load_average()
    stem = f"bench-{device.type}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    paths = report.save(rows, meta, args.out, stem)
    if not args.no_plot:
        png = report.plot(rows, meta, os.path.join(args.out, stem + ".png"))
        if png:
            paths["png"] = png
    print("\nsaved " + ", ".join(paths.values()))
    if old is not None:
        print()
        print(report.compare_tables(rows, old))
    wrong = [r for r in rows if r["status"] in ("WRONG", "ERROR")]
    if wrong:
        print(f"\nERROR: {len(wrong)} result(s) failed or differ from the reference: see the WRONG/ERROR rows",
              file=sys.stderr)
        return 1
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())

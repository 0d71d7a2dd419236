"""What a benchmark sweep covers: passes, dtypes, shapes, densities, block sizes.

A *case* is one point of the sweep (a pass on one problem); every implementation
that can run it is timed side by side on it. The useful work of a case counts only
the active blocks: ``2 * M * nnz_elements`` per product (forward: one product;
backward: input gradient + weight gradient, two; forward+backward: three).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

import torch

from ..block.layout import BLOCK_SIDES

PASSES = ("forward", "backward", "forward+backward", "projection")
# Products of a pass, for the useful work: y = xW^T; dx = gW; dW = g^T x on active blocks.
PRODUCTS = {"forward": 1, "backward": 2, "forward+backward": 3}
# "tf32" is fp32 data with CUDA's TF32 matmul mode on, for dense and sparsekern alike; "fp32" on
# CUDA runs with it off (IEEE), whatever torch's global flag says (see ``matmul_mode``).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "tf32": torch.float32}
CUDA_ONLY_DTYPES = ("tf32",)
ELEMENT = (1, 1)  # the block of a case that stands for the element format (or element granularity)
FORMATS = ("block", "element")


class BenchInputError(ValueError):
    """Bad command-line input: the CLI prints it on one line and exits with status 2."""


@dataclasses.dataclass(frozen=True)
class Shape:
    m: int  # rows of the input (tokens x batch)
    n: int  # out_features
    k: int  # in_features

    def __str__(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"


@dataclasses.dataclass(frozen=True)
class Case:
    pass_: str
    shape: Shape
    block: tuple[int, int]
    density: float
    dtype: str


@dataclasses.dataclass
class Sweep:
    shapes: list[Shape]
    densities: list[float]
    blocks: list[tuple[int, int]]
    dtypes: list[str]
    passes: list[str]
    repeats: int
    warmup: int
    budget_s: float | None = None  # CPU: an implementation past this much timing stops at 3 samples
    projection_densities: list[float] | None = None  # None: the same as the other passes

    def cases(self) -> list[Case]:
        # Projection ignores M: one case per weight shape, not per input shape.
        # Block (1, 1) in the projection pass stands for element granularity.
        out, seen = [], set()
        for pass_, dtype, shape in itertools.product(self.passes, self.dtypes, self.shapes):
            blocks, densities = self.blocks, self.densities
            if pass_ == "projection":
                if dtype in CUDA_ONLY_DTYPES:  # a matmul mode: the projection is the same as fp32's
                    continue
                blocks = list(dict.fromkeys(blocks + [ELEMENT]))
                densities = self.projection_densities or densities
            for block, density in itertools.product(blocks, densities):
                case = Case(pass_, shape, block, density, dtype)
                if pass_ == "projection":
                    dedup = (dtype, shape.n, shape.k, block, density)
                    if dedup in seen:
                        continue
                    seen.add(dedup)
                out.append(case)
        return out


@contextlib.contextmanager
def matmul_mode(dtype_name: str):
    """CUDA's TF32 flag for a case: on for "tf32", off for the others; restored afterwards."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def useful_flops(pass_: str, m: int, nnz_elements: int) -> int:
    """FLOPs of the useful work: ``2 * M * nnz_elements`` per product, active blocks only."""
    return 2 * m * nnz_elements * PRODUCTS.get(pass_, 0)


# ------------------------------------------------------------------ the sweeps
def headline(device: torch.device) -> Sweep:
    """The default sweep: about a minute on a 2-core CPU, seconds on a GPU."""
    if device.type == "cuda":
        return Sweep(shapes=[Shape(8192, 4096, 4096)], densities=[0.05, 0.1, 0.25, 0.5],
                     blocks=[(32, 32), (64, 64), (128, 128)], dtypes=["bf16", "fp16"],
                     passes=list(PASSES), repeats=30, warmup=5)
    # Projection time hardly depends on the density: one density for it here.
    return Sweep(shapes=[Shape(256, 2048, 2048)], densities=[0.05, 0.1, 0.25, 0.5],
                 blocks=[(32, 32), (64, 64)], dtypes=["fp32"],
                 passes=list(PASSES), repeats=9, warmup=1, budget_s=1.5, projection_densities=[0.1])


def element(device: torch.device) -> Sweep:
    """The element format's sweep (``--format element``): the published models' width
    (d_model 2048, an MLP of 8192) at the densities they train at."""
    densities = [1 / 16, 1 / 64, 1 / 256, 1 / 1024]
    passes = ["forward", "backward", "forward+backward"]
    if device.type == "cuda":
        return Sweep(shapes=[Shape(8192, 8192, 2048)], densities=densities, blocks=[ELEMENT], dtypes=["bf16"],
                     passes=passes, repeats=30, warmup=5)
    return Sweep(shapes=[Shape(2048, 8192, 2048)], densities=densities, blocks=[ELEMENT], dtypes=["fp32"],
                 passes=passes, repeats=7, warmup=1, budget_s=3.0)


def full(device: torch.device) -> Sweep:
    """The large sweep (``--full``): every block side, a range of shapes and densities."""
    densities = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    blocks = [(s, s) for s in BLOCK_SIDES] + [(32, 64), (64, 32)]
    if device.type == "cuda":
        # About 1,800 cases: the better part of an hour on one GPU.
        return Sweep(shapes=[Shape(4096, 4096, 4096), Shape(16384, 4096, 4096), Shape(8192, 11008, 4096)],
                     densities=densities, blocks=blocks, dtypes=["bf16", "fp16", "fp32"],
                     passes=list(PASSES), repeats=30, warmup=5)
    # About 500 cases: hours on a 2-core CPU.
    return Sweep(shapes=[Shape(256, 2048, 2048), Shape(1024, 4096, 4096)],
                 densities=densities, blocks=blocks[:5], dtypes=["fp32", "bf16"],
                 passes=list(PASSES), repeats=15, warmup=3, budget_s=5.0, projection_densities=[0.05, 0.25])


# ------------------------------------------------------------------ parsing
def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BenchInputError(f"{what}: empty list")
    return items


def parse_choices(text: str, what: str, choices) -> list[str]:
    items = parse_list(text, what)
    bad = [t for t in items if t not in choices]
    if bad:
        raise BenchInputError(f"unknown {what} {', '.join(map(repr, bad))} (choose from {', '.join(choices)})")
    return items


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for item in parse_list(text, "--shapes"):
        parts = item.lower().split("x")
        try:
            m, n, k = (int(p) for p in parts)
        except ValueError:
            raise BenchInputError(f"--shapes: {item!r} is not MxNxK (tokens x out_features x in_features)") from None
        if min(m, n, k) <= 0:
            raise BenchInputError(f"--shapes: {item!r} must be positive")
        shapes.append(Shape(m, n, k))
    return shapes


def parse_blocks(text: str) -> list[tuple[int, int]]:
    blocks = []
    for item in parse_list(text, "--block-sizes"):
        parts = item.lower().split("x")
        try:
            sides = tuple(int(p) for p in parts)
        except ValueError:
            sides = ()
        if len(sides) == 1:
            sides = sides * 2
        if len(sides) != 2 or any(s not in BLOCK_SIDES for s in sides):
            raise BenchInputError(f"--block-sizes: {item!r} must be S or OUTxIN with sides in {BLOCK_SIDES}")
        blocks.append(sides)
    return blocks


def parse_densities(text: str) -> list[float]:
    out = []
    for item in parse_list(text, "--densities"):
        try:
            d = float(item)
        except ValueError:
            d = -1.0
        if not 0.0 < d <= 1.0:
            raise BenchInputError(f"--densities: {item!r} must be a number in (0, 1]")
        out.append(d)
    return out


def check_fit(shapes, blocks) -> None:
    """Every weight must hold at least one whole block (edge blocks may be partial)."""
    for shape in shapes:
        for bo, bi in blocks:
            if (bo, bi) == ELEMENT:
                continue
            if shape.n < bo or shape.k < bi:
                raise BenchInputError(
                    f"shape {shape} does not fit block {bo}x{bi}: out_features (N={shape.n}) and "
                    f"in_features (K={shape.k}) must each be at least one block side"
                )

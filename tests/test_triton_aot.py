"""Every Triton kernel compiles ahead of time for real GPUs (sm_80, sm_90a), without one.

CI fails when a kernel stops compiling for real hardware, starts spilling, or loses
its tensor-core instructions.
"""

import pytest

from sparsekern.triton.aot import expected_tensor_core, report_in_subprocess


@pytest.fixture(scope="module")
def reports():
    # A fresh interpreter: ahead-of-time compilation cannot run under TRITON_INTERPRET=1.
    return report_in_subprocess()


def test_every_kernel_compiles_for_both_archs(reports):
    seen = {(r["kernel"], r["arch"]) for r in reports}
    kernels = {r["kernel"] for r in reports}
    assert kernels == {"bsmm_fwd/forward", "bsmm_fwd/grad_input", "bsmm_dw/grad_weight",
                       "esmm_fwd/forward", "esmm_fwd/grad_input", "esmm_dw/grad_weight",
                       "abs_topk/one_chunk", "abs_topk/loop"}
    # The element kernels have no block size, and run fp32 as IEEE only (CUDA cores).
    element = [r for r in reports if r["kernel"].startswith("esmm")]
    assert {r["block_size"] is None and not r["tf32"] for r in element} == {True}
    assert {(r["arch"], r["dtype"]) for r in element} == {(a, d) for a in (80, 90) for d in ("fp16", "bf16", "fp32")}
    # So have the AbsTopK kernels (radix selects on CUDA cores), in each dtype.
    activation = [r for r in reports if r["kernel"].startswith("abs_topk")]
    assert {r["block_size"] is None and not r["tf32"] and r["tensor_core"] == "none" for r in activation} == {True}
    assert {(r["kernel"], r["arch"], r["dtype"]) for r in activation} == {
        (k, a, d) for k in ("abs_topk/one_chunk", "abs_topk/loop") for a in (80, 90) for d in ("fp16", "bf16", "fp32")}
    assert seen == {(k, a) for k in kernels for a in (80, 90)}


def test_no_spills(reports):
    spilling = [r for r in reports if r["spill_bytes"] != 0]
    assert not spilling, spilling


def test_tensor_core_instructions(reports):
    for r in reports:
        case = f'{r["kernel"]} sm_{r["arch"]} {r["dtype"]} {r["block_size"]} tf32={r["tf32"]}'
        expected = expected_tensor_core(r["kernel"], r["arch"], r["dtype"], r["block_size"], r["tf32"])
        assert r["tensor_core"] == expected, case
    # The rule itself, so that a change to it shows here: IEEE fp32 stays off the tensor cores.
    assert {r["tensor_core"] for r in reports if r["dtype"] == "fp32" and not r["tf32"]} == {"none"}
    # The element kernels are CUDA-core gathers: no tensor-core instruction in any dtype.
    assert {r["tensor_core"] for r in reports if r["kernel"].startswith("esmm")} == {"none"}
    assert {r["tensor_core"] for r in reports if r["arch"] == 90} == {"wgmma", "mma.sync", "none"}


def test_shared_memory_fits_the_hardware(reports):
    limits = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block
    for r in reports:
        assert 0 < r["shared_bytes"] <= limits[r["arch"]], r

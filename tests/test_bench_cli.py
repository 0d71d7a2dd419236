"""The benchmark tool: bad input, a tiny smoke sweep, the correctness flag, timing, static report.

The smoke sweep is what CI runs of the benchmark: tiny shapes, two repeats, every pass,
on the CPU. Times are never asserted (speed belongs in benchmarks/); what is asserted is
that the results are saved with their machine data and that every timed row was checked
against the fp64 reference first.
"""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import sparsekern
from sparsekern.block.backends import get_backend
from sparsekern.bench import cli, gpu_check, projection, report, static
from sparsekern.bench.cases import Case, Shape, Sweep, useful_flops
from sparsekern.bench.runner import run_linear_case, run_projection_case
from sparsekern.bench.timing import time_interleaved

TINY = ["--device", "cpu", "--shapes", "32x64x64", "--densities", "0.25,1", "--block-sizes", "16,32",
        "--repeats", "2", "--warmup", "1", "--no-progress"]


def _bench(args, tmp_path, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a user's plain shell
    return subprocess.run([sys.executable, "-m", "sparsekern.bench", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,match", [
    (["--backends", "nope"], "unknown backend 'nope'"),
    (["--shapes", "64x8x64", "--block-sizes", "16"], "does not fit block 16x16"),
])
def test_bad_input_subprocess_one_line_status_2(tmp_path, args, match):
    out = _bench(args, tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsekern-bench: error:") and match in lines[0], out.stderr
    assert "Traceback" not in out.stderr and not out.stdout
    assert not (tmp_path / "bench-results").exists()  # nothing ran


@pytest.mark.parametrize("args,match", [
    (["--backends", "cpu,nope"], "unknown backend 'nope'"),
    (["--dtypes", "fp32,fp8"], "unknown dtype 'fp8'"),
    (["--device", "cpu", "--dtypes", "fp32,tf32"], "--dtypes tf32: a CUDA matmul mode, not for cpu"),
    (["--passes", "fwd"], "unknown pass 'fwd'"),
    (["--peers", "coo"], "unknown peer 'coo'"),
    (["--shapes", "8x16x16"], "does not fit block 32x32"),
    (["--shapes", "8x64"], "is not MxNxK"),
    (["--shapes", "0x64x64"], "must be positive"),
    (["--block-sizes", "48"], "sides in (16, 32, 64, 128)"),
    (["--densities", "0"], "in (0, 1]"),
    (["--densities", "1.5"], "in (0, 1]"),
    (["--device", "tpu"], "is not a device"),
    (["--device", "cuda:64"], "CUDA device"),
    (["--repeats", "0"], "--repeats must be positive"),
    (["--threads", "0"], "--threads must be positive"),
    (["--compare", "/nonexistent/old.json"], "--compare: cannot read"),
    (["--repeats", "two"], "invalid int value"),
])
def test_bad_input_in_process(capsys, tmp_path, args, match):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "out").exists()


def test_backend_that_cannot_run_here_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    name = next((n for n in ("cuda", "triton") if get_backend(n).reasons(torch.device("cpu"), torch.float32,
                                                                         (32, 32))), None)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--device", "cpu", "--backends", name])
    assert exit_info.value.code == 2
    assert f"backend {name!r} cannot run on cpu" in capsys.readouterr().err


# ------------------------------------------------------------------ smoke sweep
def test_smoke_sweep_writes_checked_results(tmp_path):
    out = _bench([*TINY, "--out", "res"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(os.listdir(tmp_path / "res"))
    stems = {os.path.splitext(f)[0] for f in files}
    assert len(stems) == 1 and {os.path.splitext(f)[1] for f in files} == {".json", ".csv", ".png"}, files
    stem = str(tmp_path / "res" / stems.pop())

    data = json.load(open(stem + ".json"))
    meta, rows = data["meta"], data["rows"]
    assert meta["torch"] == torch.__version__ and meta["threads"] >= 1 and meta["cpu"]
    assert "commit" in meta and "triton" in meta and meta["device"] == "cpu"
    # Every backend that can run CPU tensors outside the Triton interpreter is benchmarked.
    expected = [n for n in sparsekern.backend_names() if get_backend(n).automatic(torch.device("cpu"))
                and not get_backend(n).reasons(torch.device("cpu"), torch.float32, (16, 16))]
    assert meta["backends"] == expected and "reference" in expected

    passes = {"forward", "backward", "forward+backward", "projection"}
    assert {r["pass"] for r in rows} == passes
    linear = [r for r in rows if r["pass"] != "projection"]
    # 3 passes x 2 blocks x 2 densities cases, each with dense + backends + the two peers.
    assert len(linear) == 3 * 2 * 2 * (1 + len(expected) + 2)
    for r in linear:
        if r["kind"] in ("dense", "sparsekern"):
            assert r["status"] == "ok" and r["verified"] is True, r
            assert r["rel_error"] <= r["tolerance"] and r["time_ms"] > 0 and r["samples"] == 2
        elif r["status"] == "ok":  # torch's own sparse paths, where torch implements them
            assert r["verified"] is True, r
        else:
            assert r["status"] == "n/a" and r["note"] and r["time_ms"] is None
        # Useful work: exactly the active blocks (16 of 16x16 on 64x64 at density 0.25: 4 blocks).
        blocks = (64 // r["block_out"]) * (64 // r["block_in"])
        nnz = sparsekern.count_for_density(r["density"], blocks) * r["block_out"] * r["block_in"]
        assert r["nnz_elements"] == nnz
        assert r["useful_flops"] == useful_flops(r["pass"], 32, nnz)
        assert r["ideal"] == pytest.approx(64 * 64 / nnz)
        if r["kind"] == "dense":
            assert r["speedup"] == pytest.approx(1.0)
    assert any(r["impl"] == "torch-csr" and r["status"] == "ok" for r in linear)
    for r in rows:
        if r["pass"] == "projection":  # checked against torch's top-k: same entries kept, values untouched
            assert r["status"] == "ok" and r["verified"] is True and r["time_ms"] > 0, r
    blocks = {r["block"] for r in rows if r["pass"] == "projection"}
    assert blocks == {"16x16", "32x32", "element"}
    assert {r["impl"] for r in rows if r["block"] == "element"} == {"torch-topk", *meta["projection_backends"]}

    with open(stem + ".csv") as f:
        lines = [line for line in f if not line.startswith("#")]
    assert len(list(csv.DictReader(lines))) == len(rows)
    with open(stem + ".png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for title in ("== forward", "== backward", "== forward+backward"):
        assert title in out.stdout
    assert "dense" in out.stdout and "x dense" in out.stdout


def test_compare_prints_ratio_to_earlier_run(tmp_path, capsys):
    args = [*TINY, "--passes", "forward", "--peers", "none", "--no-plot", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    (old,) = tmp_path.glob("*.json")
    capsys.readouterr()
    time.sleep(1.1)  # a new file stamp
    assert cli.main([*args, "--compare", str(old)]) == 0
    out = capsys.readouterr().out
    assert "against the earlier run" in out and "old/new" in out
    body = out.split("against the earlier run", 1)[1]
    rows = [line.split() for line in body.splitlines()[3:] if line.strip()]
    assert len(rows) == 4 * (1 + len(json.load(open(old))["meta"]["backends"]))  # every row matched
    for cells in rows:
        # old/new: a number for every row (the same cases ran before; "new" where none did). Its
        # value is timing: a loaded machine can make a tiny case 100x slower, so only its sign counts.
        assert float(cells[7]) >= 0


# ------------------------------------------------------------------ the correctness flag
def _case(pass_="forward", block=(16, 16), density=0.5):
    return Case(pass_, Shape(16, 64, 48), block, density, "fp32")


def test_wrong_backend_result_is_flagged(monkeypatch):
    backend = get_backend("reference")
    right = backend.forward
    monkeypatch.setattr(backend, "forward", lambda *a: right(*a) * 1.001)
    rows = run_linear_case(_case(), ["reference"], [], torch.device("cpu"), repeats=1, warmup=0, seed=0)
    by = {r["impl"]: r for r in rows}
    assert by["dense"]["verified"] and by["dense"]["status"] == "ok"
    assert by["reference"]["status"] == "WRONG" and by["reference"]["verified"] is False
    assert by["reference"]["time_ms"] is None  # a wrong result is not timed


def test_wrong_weight_gradient_off_layout_is_flagged(monkeypatch):
    backend = get_backend("reference")
    monkeypatch.setattr(backend, "grad_weight", lambda g, x, *a: g.t() @ x)  # dense dW: nonzero off layout
    rows = run_linear_case(_case("backward"), ["reference"], [], torch.device("cpu"), repeats=1, warmup=0,
                           seed=0)
    assert {r["impl"]: r["status"] for r in rows} == {"dense": "ok", "reference": "WRONG"}


def test_backend_unsupported_case_is_not_available():
    case = Case("forward", Shape(16, 64, 48), (16, 16), 0.5, "fp16")
    rows = run_linear_case(case, ["cpu"], [], torch.device("cpu"), repeats=1, warmup=0, seed=0)
    cpu = next(r for r in rows if r["impl"] == "cpu")
    assert cpu["status"] == "n/a" and cpu["note"]


def test_projection_pass_checks_against_torch_topk(monkeypatch):
    def right(weight, k, *, granularity="element", block_size=None, backend=None):
        projection.torch_topk_(weight, k, granularity, block_size)

    def wrong(weight, k, *, granularity="element", block_size=None, backend=None):
        projection.torch_topk_(weight, max(k - 1, 0), granularity, block_size)

    for block in ((16, 16), projection.ELEMENT):
        case = Case("projection", Shape(1, 64, 48), block, 0.25, "fp32")
        for fake, status in ((right, "ok"), (wrong, "WRONG")):
            monkeypatch.setattr(sparsekern, "topk_project_", fake, raising=False)
            rows = run_projection_case(case, ["reference"], torch.device("cpu"), repeats=2, warmup=0, seed=0)
            by = {r["impl"]: r for r in rows}
            assert by["torch-topk"]["status"] == "ok" and by["torch-topk"]["speedup"] == pytest.approx(1.0)
            # Block mode has one code path whatever the backend: one row, "sparsekern".
            name = "reference" if block == projection.ELEMENT else "sparsekern"
            assert set(by) == {"torch-topk", name} and by[name]["status"] == status, by[name]


def test_sweep_cases_and_flops():
    sweep = Sweep([Shape(8, 64, 64), Shape(16, 64, 64)], [0.5], [(16, 16)], ["fp32"],
                  ["forward", "projection"], 1, 0)
    cases = sweep.cases()
    assert sum(c.pass_ == "forward" for c in cases) == 2
    # Projection does not depend on M: one per weight shape, block and element granularity.
    assert sorted(c.block for c in cases if c.pass_ == "projection") == [(1, 1), (16, 16)]
    assert useful_flops("backward", 8, 100) == 2 * useful_flops("forward", 8, 100) == 3200


# ------------------------------------------------------------------ timing
def test_interleaved_timing_orders_and_leaves_setup_untimed():
    fns = {"short": lambda i: time.sleep(0.002), "long": lambda i: time.sleep(0.008)}
    setups = {"long": lambda i: time.sleep(0.02)}
    calls = []
    fns["short"] = lambda i: (calls.append(i), time.sleep(0.002))
    t = time_interleaved(fns, torch.device("cpu"), repeats=5, warmup=1, setups=setups, min_sample_s=0)
    assert t["short"]["samples"] == t["long"]["samples"] == 5
    assert 0.002 <= t["short"]["median_s"] < t["long"]["median_s"] < 0.02  # the 20 ms setup is not counted
    assert calls == list(range(6))  # the call counter rotates input sets


# ------------------------------------------------------------------ static report
def test_static_report_collects_providers_and_says_what_is_missing():
    def fake():
        return [{"source": "fake", "kernel": "k", "arch": 90, "dtype": "fp16", "block_size": [32, 32],
                 "tf32": False, "registers": 96, "spill_bytes": 0, "shared_bytes": 16384, "tensor_core": "wgmma"}]

    def missing():
        raise static.Unavailable("fake kernels: not built")

    rows, messages = static.collect({"fake": fake, "missing": missing})
    assert len(rows) == 1 and messages == ["fake kernels: not built"]
    text = static.table(rows)
    assert "sm_90a" in text and "wgmma" in text and "16384" in text


def test_static_cuda_hook(monkeypatch):
    """The CUDA provider reads sparsekern.cuda_static.static_report() (its figures are tested with
    the CUDA build); when that says it cannot run, the reason is reported. Nothing is compiled here."""
    from sparsekern import cuda_static

    row = {"kernel": "bsmm_fwd", "arch": "sm_80", "dtype": "bf16", "block_size": [64, 64], "tf32": False,
           "registers": 128, "spill_bytes": 0, "shared_bytes": 32768, "tensor_core": "mma.sync m16n8k16"}
    monkeypatch.setattr(cuda_static, "static_report", lambda: [row])
    rows, messages = static.collect({"cuda": static.cuda_rows})
    assert rows == [{"source": "cuda", **row}] and not messages
    assert "sm_80 " in static.table(rows)

    def no_nvcc():
        raise static.Unavailable("CUDA C++ kernels: nvcc not found")

    monkeypatch.setattr(cuda_static, "static_report", no_nvcc)
    assert static.collect({"cuda": static.cuda_rows}) == ([], ["CUDA C++ kernels: nvcc not found"])


def test_element_format_sweep_checks_every_row_and_reports_the_roofline(tmp_path):
    out = _bench(["--format", "element", "--device", "cpu", "--shapes", "48x96x80", "--densities", "0.05,0.5",
                  "--repeats", "2", "--warmup", "1", "--no-progress", "--no-plot", "--out", "res"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (tmp_path / "res").glob("*.json")
    rows = json.load(open(path))["rows"]
    assert {r["block"] for r in rows} == {"element"}
    assert {r["pass"] for r in rows} == {"forward", "backward", "forward+backward"}
    for r in rows:
        if r["impl"] == "torch-bsr":
            assert r["status"] == "n/a" and "needs blocks" in r["note"]
        elif r["kind"] in ("dense", "sparsekern"):
            assert r["status"] == "ok" and r["verified"], r
            # the roofline: dense time over max(density x dense time, the memory floor)
            dense = next(d for d in rows if d["impl"] == "dense" and d["pass"] == r["pass"]
                         and d["density"] == r["density"])
            roof_ms = max(r["element_density"] * dense["time_ms"], r["floor_ms"])
            assert r["roofline"] == pytest.approx(dense["time_ms"] / roof_ms)
            assert r["of_roofline"] == pytest.approx(roof_ms / r["time_ms"])
    assert "roofline" in out.stdout and "% roofline" in out.stdout


def test_element_format_refuses_blocks():
    with pytest.raises(SystemExit):
        cli.main(["--format", "element", "--block-sizes", "32"])


# ------------------------------------------------------------------ the optional SparseProp peer
def test_sparseprop_peer_is_a_default_of_the_element_format_only():
    assert cli.parse_peers(None, "element") == ["bsr", "csr", "sparseprop"]
    assert cli.parse_peers(None, "block") == ["bsr", "csr"]
    assert cli.parse_peers("sparseprop,csr") == ["sparseprop", "csr"]


def test_sparseprop_not_installed_is_reported_not_available(monkeypatch, tmp_path, capsys):
    # As if the package were absent (installed or not here): every import of it fails.
    for name in [m for m in sys.modules if m.partition(".")[0] == "sparseprop"] + ["sparseprop"]:
        monkeypatch.setitem(sys.modules, name, None)
    args = ["--format", "element", "--device", "cpu", "--shapes", "16x64x48", "--densities", "0.25",
            "--passes", "forward", "--backends", "reference", "--repeats", "1", "--warmup", "0",
            "--no-progress", "--no-plot", "--out", str(tmp_path)]
    assert cli.main(args) == 0  # a missing optional peer is no failure
    out = capsys.readouterr().out
    assert "sparseprop n/a: sparseprop is not installed (pip install sparseprop)" in out
    (path,) = tmp_path.glob("*.json")
    row = next(r for r in json.load(open(path))["rows"] if r["impl"] == "sparseprop")
    assert row["status"] == "n/a" and row["time_ms"] is None and row["kind"] == "peer"


@pytest.mark.skipif(importlib.util.find_spec("sparseprop") is None,
                    reason="sparseprop is not installed (make bench-peers)")
@pytest.mark.parametrize("pass_", ["forward", "backward", "forward+backward"])
def test_sparseprop_peer_passes_the_check(pass_):
    case = Case(pass_, Shape(16, 64, 48), (1, 1), 0.25, "fp32")
    rows = run_linear_case(case, [], ["sparseprop"], torch.device("cpu"), repeats=1, warmup=0, seed=0)
    by = {r["impl"]: r for r in rows}
    assert by["sparseprop"]["status"] == "ok" and by["sparseprop"]["verified"] is True, by["sparseprop"]
    assert by["sparseprop"]["time_ms"] > 0


@pytest.mark.skipif(importlib.util.find_spec("sparseprop") is None,
                    reason="sparseprop is not installed (make bench-peers)")
def test_sparseprop_weight_gradient_is_checked(monkeypatch):
    from sparsekern.bench import impls

    right = impls.SparseProp.dense_weight_grad
    monkeypatch.setattr(impls.SparseProp, "dense_weight_grad", lambda self, g: right(self, g) * 1.001)
    case = Case("backward", Shape(16, 64, 48), (1, 1), 0.25, "fp32")
    rows = run_linear_case(case, [], ["sparseprop"], torch.device("cpu"), repeats=1, warmup=0, seed=0)
    by = {r["impl"]: r for r in rows}
    assert by["sparseprop"]["status"] == "WRONG" and "dw rel. error" in by["sparseprop"]["note"]


def test_an_interrupted_sweep_saves_the_cases_it_finished(tmp_path):
    # gpu-check ends a benchmark past its time limit with SIGINT: what was measured is saved.
    import signal

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.Popen([sys.executable, "-m", "sparsekern.bench", "--device", "cpu", "--shapes", "64x256x256",
                             "--densities", ",".join(str(d / 100) for d in range(5, 100, 5)), "--block-sizes", "16,32",
                             # Long enough (about a minute) that 8 s cannot see it through, on any machine.
                             "--repeats", "150", "--no-progress", "--no-plot", "--out", "res"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=gpu_check.default_sigint)  # a CI shell may start us with SIGINT ignored
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    (path,) = (tmp_path / "res").glob("*.json")
    data = json.load(open(path))
    assert data["meta"]["interrupted"].startswith("interrupted after ")
    assert "of 171 cases" in data["meta"]["interrupted"]
    assert all(r["status"] != "ERROR" for r in data["rows"])


def test_tf32_cases_set_the_matmul_mode_and_skip_the_projection():
    from sparsekern.bench.cases import matmul_mode

    before = torch.backends.cuda.matmul.allow_tf32
    with matmul_mode("tf32"):
        assert torch.backends.cuda.matmul.allow_tf32
        with matmul_mode("fp32"):
            assert not torch.backends.cuda.matmul.allow_tf32  # fp32 is IEEE whatever the global flag
        assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    sweep = Sweep(shapes=[Shape(8, 64, 64)], densities=[0.5], blocks=[(32, 32)], dtypes=["fp32", "tf32"],
                  passes=["forward", "projection"], repeats=1, warmup=0)
    assert {(c.pass_, c.dtype) for c in sweep.cases()} == {("forward", "fp32"), ("forward", "tf32"),
                                                           ("projection", "fp32")}


def test_report_compare_matches_rows_by_case():
    row = {"pass": "forward", "impl": "dense", "dtype": "fp32", "m": 1, "n": 2, "k": 3, "block": "16x16",
           "density": 0.5, "time_ms": 2.0}
    text = report.compare_tables([dict(row, time_ms=1.0), dict(row, impl="cpu", time_ms=1.0)],
                                 {"rows": [row]})
    lines = text.strip().splitlines()
    assert lines[-2].split()[-3] == "2.00"  # dense: 2 ms -> 1 ms
    assert lines[-1].split()[-3] == "new"  # cpu has no old row


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the CUDA-event timing path")
def test_smoke_sweep_on_gpu(tmp_path):
    out = _bench(["--device", "cuda", "--shapes", "64x128x128", "--densities", "0.5", "--block-sizes", "32",
                  "--dtypes", "fp16,fp32", "--repeats", "3", "--warmup", "1", "--no-progress", "--out", "res"],
                 tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (path,) = (tmp_path / "res").glob("*.json")
    data = json.load(open(path))
    assert data["meta"]["gpu"] and "triton" in data["meta"]["backends"]
    for r in data["rows"]:
        if r["kind"] in ("dense", "sparsekern", "baseline"):
            assert r["status"] == "ok" and r["verified"] is True and r["time_ms"] > 0, r


def test_projection_check_accepts_either_choice_among_ties():
    # torch.topk keeps any of the entries tied at the k-th magnitude, sparsekern the lowest
    # indices: the check accepts either there (without the tie rule this check fails).
    import sparsekern
    from sparsekern.bench import projection
    from sparsekern.bench.cases import ELEMENT, Case, Shape

    case = Case("projection", Shape(1, 64, 64), ELEMENT, 0.25, "fp32")
    original = torch.randint(-3, 4, (64, 64), generator=torch.Generator().manual_seed(0)).float()
    ours, torch_way = original.clone(), original.clone()
    sparsekern.topk_project_(ours, 1024)
    projection.torch_topk_(torch_way, 1024, "element", ELEMENT)
    assert not torch.equal(ours, torch_way)  # the two do choose differently among the ties
    for name, kind, fn, setup, check in projection.callables(case, torch.device("cpu"), ["cpu"], 0, original):
        assert projection.probe(check) == 0.0, name

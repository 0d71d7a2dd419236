"""``make gpu-check`` (sparsekern/bench/gpu_check.py) on a machine without a GPU: it exits 0 at
once and says so; its report writer on a recorded sample; its stages' time limits; and every
test module that needs a GPU is one it runs.

The sample (tests/data/gpu_report_sample.json) holds real stage outputs recorded on the CPU (a
pytest run's JUnit outcomes, a CPU sweep's bench rows) with a GPU machine's facts written in."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from sparsekern.bench import gpu_check

ROOT = gpu_check.ROOT
SAMPLE = os.path.join(ROOT, "tests", "data", "gpu_report_sample.json")
no_gpu_here = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")


@no_gpu_here
def test_make_gpu_check_without_a_gpu_exits_zero_at_once_and_writes_nothing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    t0 = time.monotonic()
    out = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, OUT=str(tmp_path)))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no GPU here (torch sees no CUDA device" in out.stdout
    assert time.monotonic() - t0 < 60
    assert list(tmp_path.iterdir()) == []


@no_gpu_here
def test_an_interpreter_without_torch_counts_as_no_gpu(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = subprocess.run([sys.executable, os.path.join(ROOT, "sparsekern/bench/gpu_check.py"), "--python", str(fake),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"no GPU here (no torch in {fake}" in out.stdout
    assert not (tmp_path / "out").exists()


def test_report_writer_on_recorded_sample(tmp_path):
    report = json.load(open(SAMPLE))
    paths = gpu_check.write_report(report, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["gpu-logs.txt", "gpu-report.json", "gpu-report.md"]
    assert json.load(open(paths["report.json"])) == report
    md = open(paths["report.md"]).read()
    machine = report["machine"]
    for fact in (machine["gpu"], machine["driver"], machine["torch"], machine["triton"], machine["commit"]):
        assert fact in md
    for stage in report["stages"]:  # every stage with its outcome
        assert f"| {stage['name']} | {stage['status']} | {stage['wall_s']} |" in md
    for module in {t["module"] for t in report["tests"]}:  # every module's counts
        outcomes = [t["outcome"] for t in report["tests"] if t["module"] == module]
        counts = " | ".join(str(outcomes.count(o)) for o in ("passed", "failed", "error", "skipped"))
        assert f"| {module} | {counts} |" in md
    for test in report["tests"]:  # everything that did not pass is named
        assert (test["outcome"] == "passed") != (f"`{test['module']}::{test['name']}`" in md)
    for row in report["bench"]["rows"]:  # every timed row with its time and speedup; the others with why
        cells = f"| {row['dtype']} | {row['m']}x{row['n']}x{row['k']} | {row['block']} | {row['density']:g} | {row['impl']} |"
        if row["status"] == "ok":
            assert f"{cells} {row['time_ms']:.4g} | {row['tflops']:.3g} | {row['speedup']:.2f} | ok |" in md
        else:
            assert f"{cells} - | - | - | {row['status']}:" in md
    logs = open(paths["logs.txt"]).read()
    assert logs.count("===== ") == len(report["stages"])


def test_junit_outcomes_are_read_from_a_real_pytest_run(tmp_path):
    (tmp_path / "test_three.py").write_text(textwrap.dedent("""
        import pytest
        def test_ok(): assert True
        def test_bad(): assert 1 == 2, "one is not two"
        @pytest.mark.skip(reason="needs a CUDA GPU")
        def test_skip(): pass
    """))
    xml = tmp_path / "out.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                    str(tmp_path / "test_three.py")], capture_output=True, timeout=120, cwd=tmp_path)
    tests = {t["name"]: t for t in gpu_check.parse_junit(str(xml), "m.py", "failed")}
    assert {n: t["outcome"] for n, t in tests.items()} == {"test_ok": "passed", "test_bad": "failed",
                                                           "test_skip": "skipped"}
    assert "one is not two" in tests["test_bad"]["message"]
    (missing,) = gpu_check.parse_junit(str(tmp_path / "none.xml"), "m.py", "timeout")
    assert missing["outcome"] == "timeout"


def test_a_stage_past_its_limit_is_ended_with_its_children_and_the_next_still_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.LIMITS, "tests", (2, 1))
    monkeypatch.setitem(gpu_check.LIMITS, "bench", (30, 1))
    run = gpu_check.Run(sys.executable, str(tmp_path / "out"), budget_s=60)
    pid_file = tmp_path / "child.pid"
    hang = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(120)']); open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(120)")
    t0 = time.monotonic()
    slow = run.stage("tests:hang", "tests", [sys.executable, "-c", hang], later=["bench"])
    assert slow["status"] == "timeout" and time.monotonic() - t0 < 20
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not _running(child), "the stage's grandchild outlived its limit"
    fine = run.stage("bench", "bench", [sys.executable, "-c", "print('done')"], later=[])
    assert fine["status"] == "passed" and "done" in fine["tail"]
    saved = json.load(open(tmp_path / "out" / "gpu-report.json"))
    assert [s["status"] for s in saved["stages"]] == ["timeout", "passed"]


def test_a_stage_past_its_limit_keeps_the_outcomes_pytest_had(tmp_path, monkeypatch):
    # Interrupted (SIGINT) rather than killed, pytest still writes the JUnit report of the tests
    # that finished before the limit.
    # 20 s: time for pytest to start and finish test_quick even on a loaded CI machine.
    monkeypatch.setitem(gpu_check.LIMITS, "tests", (20, 1))
    (tmp_path / "test_slow.py").write_text("import time\ndef test_quick(): pass\ndef test_hangs(): time.sleep(120)\n")
    xml = tmp_path / "out.xml"
    run = gpu_check.Run(sys.executable, str(tmp_path / "out"), budget_s=60)
    record = run.stage("tests:slow", "tests", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                               f"--junitxml={xml}", str(tmp_path / "test_slow.py")], later=[])
    assert record["status"] == "timeout"
    outcomes = {t["name"]: t["outcome"] for t in gpu_check.parse_junit(str(xml), "slow", record["status"])}
    assert outcomes.get("test_quick") == "passed", outcomes


def test_a_module_that_only_skipped_on_a_gpu_machine_fails():
    skipped = [{"outcome": "skipped"}, {"outcome": "skipped"}]
    assert gpu_check.module_status("passed", skipped) == "failed"
    assert gpu_check.module_status("passed", skipped + [{"outcome": "passed"}]) == "passed"
    assert gpu_check.module_status("timeout", []) == "timeout"


def test_a_truncated_junit_report_is_one_error_entry(tmp_path):
    xml = tmp_path / "cut.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite><testcase name="a"')
    (entry,) = gpu_check.parse_junit(str(xml), "m.py", "timeout")
    assert entry["outcome"] == "error" and "unreadable" in entry["message"]


def test_bench_rows_without_a_speedup_render(tmp_path):
    report = json.load(open(SAMPLE))
    row = dict(report["bench"]["rows"][0], speedup=None, tflops=None)
    report["bench"]["rows"] = [row]
    md = open(gpu_check.write_report(report, str(tmp_path))["report.md"]).read()
    assert f"| {row['impl']} | {row['time_ms']:.4g} | - | - | ok |" in md


def _running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait unreaped in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_stage_that_would_eat_a_later_stages_minimum_is_shortened_or_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(gpu_check.LIMITS, "build", (240, 60))
    monkeypatch.setitem(gpu_check.LIMITS, "bench", (150, 40))
    run = gpu_check.Run(sys.executable, str(tmp_path), budget_s=100)
    assert 55 < run.stage_limit("build", later=["bench"]) <= 60  # 100 s left, 40 s kept for the bench
    run.deadline = time.monotonic() + 30
    skipped = run.stage("build", "build", [sys.executable, "-c", "pass"], later=["bench"])
    assert skipped["status"] == "skipped" and "not started" in skipped["tail"]


def _modules_needing_a_gpu() -> set[str]:
    """Test files that skip without CUDA, pick CUDA when present or carry the gpu mark."""
    found = set()
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if not name.startswith("test_") or not name.endswith(".py") or name == "test_gpu_check.py":
            continue
        text = open(os.path.join(ROOT, "tests", name)).read()
        if re.search(r"not torch\.cuda\.is_available\(\)|mark\.gpu|\"cuda\" if torch\.cuda\.is_available\(\)", text):
            found.add(f"tests/{name}")
    return found


def test_every_test_module_that_needs_a_gpu_is_run_by_gpu_check():
    assert _modules_needing_a_gpu() == set(gpu_check.GPU_TEST_MODULES)
    for module in gpu_check.GPU_TEST_MODULES:
        assert os.path.exists(os.path.join(ROOT, module)), module


def test_modules_run_with_a_gpu_mark_filter_mark_every_cuda_test():
    # A module run with `-m gpu` must mark every test that is skipped without CUDA, or
    # gpu-check never runs it.
    for module, args in gpu_check.GPU_TEST_MODULES.items():
        if "-m" not in args:
            continue
        tree = ast.parse(open(os.path.join(ROOT, module)).read())
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")):
            marks = [ast.unparse(d) for d in fn.decorator_list]
            if any("cuda.is_available" in m for m in marks):
                assert "pytest.mark.gpu" in marks, f"{module}::{fn.name} needs CUDA but lacks @pytest.mark.gpu"


def test_bench_args_are_a_valid_sweep():
    from sparsekern.bench import cli

    args = cli.build_parser().parse_args(gpu_check.BENCH_ARGS)
    assert args.dtypes.split(",") == ["bf16", "fp16", "tf32", "fp32"] and args.device == "cuda"


def test_gpu_arch_for_the_build():
    assert gpu_check._gpu_arch((9, 0)) == "9.0a" and gpu_check._gpu_arch((8, 0)) == "8.0"

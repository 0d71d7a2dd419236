"""What a plain install gets and what the project's own venv gets.

- ``sparsekern-bench`` runs after ``pip install sparsekern`` alone (torch and numpy): without
  tqdm, matplotlib or triton it runs the sweep and notes, in one line each, what it skips;
- an extension built against another torch than the running one is refused, at first use,
  with both versions and the rebuild command, and the backends that need it say so;
- the optional packages are listed once, in pyproject.toml's extras, and requirements-dev.txt
  holds only what .venv pins or needs to build.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sparsekern
from sparsekern import _extension
from sparsekern.backend import BackendUnavailableError
from sparsekern.block.backends import get_backend

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--device", "cpu", "--shapes", "32x64x64", "--densities", "0.25", "--block-sizes", "16",
        "--passes", "forward", "--repeats", "2", "--warmup", "1"]
# What a plain install may lack: the bench extra, and triton (torch's CPU wheels do not bring it).
MISSING = ("tqdm", "matplotlib", "triton")


@pytest.fixture(scope="module")
def bench_without_optional_packages(tmp_path_factory):
    """The benchmark CLI twice in one fresh interpreter (one torch import) in which ``MISSING``
    cannot be imported: with --no-progress --no-plot, then with neither. Per run: (status, stderr, out dir)."""
    tmp = tmp_path_factory.mktemp("bench")
    runs = [[*TINY, "--no-progress", "--no-plot", "--out", str(tmp / "quiet")], [*TINY, "--out", str(tmp / "full")]]
    code = ("import sys\n"
            f"for name in {list(MISSING)!r}:\n"
            "    sys.modules[name] = None  # import raises ModuleNotFoundError, find_spec gives None\n"
            "from sparsekern.bench.cli import main\n"
            f"for args in {runs!r}:\n"
            "    print('status', main(args), file=sys.stderr, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a user's plain shell
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    parts = re.split(r"^status (\d+)$", out.stderr, flags=re.M)  # [stderr 1, status 1, stderr 2, status 2, '']
    assert len(parts) == 5, out.stderr
    return {"quiet": (int(parts[1]), parts[0], tmp / "quiet"), "full": (int(parts[3]), parts[2], tmp / "full")}


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("sparsekern-bench: no ")]


# ------------------------------------------------------------ the benchmark after a plain install
def test_bench_runs_without_its_optional_packages_and_notes_each_in_one_line(bench_without_optional_packages):
    status, stderr, out_dir = bench_without_optional_packages["full"]
    assert status == 0, stderr
    notes = _notes(stderr)
    assert len(notes) == 2, stderr
    assert notes[0].startswith("sparsekern-bench: no progress bar: tqdm cannot be imported"), notes
    assert notes[1].startswith("sparsekern-bench: no plot: matplotlib cannot be imported"), notes
    assert notes[0].endswith("pip install tqdm") and notes[1].endswith("pip install matplotlib"), notes
    assert {p.suffix for p in out_dir.iterdir()} == {".json", ".csv"}  # results saved, no plot
    (result,) = out_dir.glob("*.json")
    rows = json.loads(result.read_text())["rows"]
    sparse = [r for r in rows if r["kind"] == "sparsekern"]
    assert sparse and all(r["status"] == "ok" and r["verified"] for r in sparse), sparse
    assert "triton" not in {r["impl"] for r in rows}  # its backend said it cannot run, and was left out


def test_bench_asked_for_no_progress_bar_and_no_plot_does_not_look_for_them(bench_without_optional_packages):
    status, stderr, out_dir = bench_without_optional_packages["quiet"]
    assert status == 0, stderr
    assert _notes(stderr) == [], stderr
    assert {p.suffix for p in out_dir.iterdir()} == {".json", ".csv"}


# ------------------------------------------------------------ the extension's torch version
needs_extension = pytest.mark.skipif(
    os.environ.get("SPARSEKERN_SKIP_EXTENSION", "0") not in ("", "0"),
    reason="the compiled extension was not built (SPARSEKERN_SKIP_EXTENSION=1)")


@needs_extension
def test_the_built_extension_records_the_torch_it_was_built_with():
    assert _extension.unavailable_reason() is None
    assert _extension.built_for_torch(_extension.extension().built_with) == torch.__version__


@pytest.mark.parametrize("built_with,running,refused", [
    ("torch 2.14.1+cu130, CPU kernels", "2.14.1+cu130", False),
    ("torch 2.15.0, CPU kernels", "2.14.1+cu130", True),
    ("torch 2.14.1+cpu, CPU kernels", "2.14.1+cu130", True),  # same release, other libraries
    ("torch unknown, CPU kernels", "2.14.1", True),  # built without setup.py's define
    ("", "2.14.1", True),
])
def test_torch_mismatch_refuses_any_other_build(built_with, running, refused):
    why = _extension.torch_mismatch(built_with, running)
    assert (why is not None) == refused
    if refused:
        assert f"torch {running} is running" in why and "--no-build-isolation" in why


@pytest.fixture
def built_for_another_torch():
    """The loaded extension as if compiled against torch 2.0.0; the real one again afterwards."""
    module = _extension.extension()
    if module is None:
        pytest.skip(f"the compiled extension is unavailable: {_extension.unavailable_reason()}")
    recorded = module.built_with
    module.built_with = recorded.replace(f"torch {torch.__version__}", "torch 2.0.0", 1)
    _extension._load.cache_clear()
    try:
        yield module
    finally:
        module.built_with = recorded
        _extension._load.cache_clear()


@needs_extension
def test_an_extension_built_for_another_torch_is_refused_and_the_backends_say_why(built_for_another_torch):
    with pytest.warns(RuntimeWarning, match="built for torch 2.0.0"):
        why = _extension.unavailable_reason("bsmm_forward_cpu")
    assert f"built for torch 2.0.0, but torch {torch.__version__} is running" in why
    assert "pip install --no-build-isolation" in why
    assert _extension.extension() is None
    cpu = get_backend("cpu")
    assert why in cpu.reasons(torch.device("cpu"), torch.float32, (32, 32))
    assert "cpu" not in sparsekern.available_backends()
    layout = sparsekern.BlockLayout.random((64, 64), (32, 32), density=0.5)
    weight = torch.randn(64, 64) * layout.to_mask()
    with pytest.raises(BackendUnavailableError, match="built for torch 2.0.0"):
        sparsekern.block_sparse_linear(torch.randn(4, 64), weight, layout, backend="cpu")
    with pytest.raises(RuntimeError, match="built for torch 2.0.0"):
        sparsekern.cpu_isa()


# ------------------------------------------------------------ one list of dependencies
def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()


def _project():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_package_is_listed_once():
    project = _project()
    lists = {"dependencies": project["dependencies"]}
    lists.update((f"extra {name}", packages) for name, packages in project["optional-dependencies"].items())
    where: dict[str, list[str]] = {}
    for list_name, packages in lists.items():
        for package in packages:
            where.setdefault(_name(package), []).append(list_name)
    twice = {package: places for package, places in where.items() if len(places) > 1}
    assert not twice, f"listed more than once in pyproject.toml: {twice}"
    # requirements-dev.txt: .venv's build tools, and exact pins of dependencies (torch==2.14.1), no extra.
    lines = (ROOT / "requirements-dev.txt").read_text().splitlines()
    for line in (line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")):
        places = where.get(_name(line), [])
        assert not [p for p in places if p.startswith("extra ")], f"requirements-dev.txt repeats an extra: {line}"
        assert not places or "==" in line, f"requirements-dev.txt repeats a dependency without pinning it: {line}"


def test_the_project_venv_installs_every_extra():
    extras = set(_project()["optional-dependencies"])
    makefile = (ROOT / "Makefile").read_text()
    installed = re.search(r"^EXTRAS\s*:?=\s*(\S+)", makefile, re.M)
    assert installed and set(installed.group(1).split(",")) == extras, installed
    assert re.search(r'pip install [^\n]*--no-build-isolation[^\n]*-e "\.\[\$\(EXTRAS\)\]"', makefile)


def test_the_benchmarks_optional_modules_are_its_extra():
    # Each module the CLI can do without (optional_module("name", ...)) is in the bench extra.
    sources = "".join(p.read_text() for p in (ROOT / "sparsekern" / "bench").glob("*.py"))
    optional = set(re.findall(r'optional_module\("([\w.]+)"', sources))
    assert optional >= {"tqdm", "matplotlib"}
    assert optional <= {_name(p) for p in _project()["optional-dependencies"]["bench"]}

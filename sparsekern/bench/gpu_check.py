"""``make gpu-check``: everything that needs a GPU, in one command with a time budget.

Run it on a machine with an NVIDIA GPU whose Python already has torch and triton (it installs
nothing): ``make gpu-check`` (``PYTHON=...`` to choose the interpreter), or
``python sparsekern/bench/gpu_check.py``. Without a GPU it says so and exits 0 at once.

Stages, each a subprocess with its own time limit inside one overall budget (a stage past its
limit is ended and reported, and the next one still runs):

1. ``probe``: device, driver, versions (torch's view of the GPU);
2. ``build``: the extension built in place for the GPU's own compute capability (sm_90a on
   an H200), with as many compile jobs as cores;
3. ``extension``: what was built, which backends can run on the GPU;
4. ``tests:<module>``: every module of ``GPU_TEST_MODULES`` under pytest, each test's outcome
   read from its JUnit XML;
5. ``bench``: a short ``sparsekern-bench`` sweep on the GPU, every backend against cuBLAS in
   bf16, fp16, TF32 and fp32, each result checked before it is timed (CUDA events after an
   L2 flush).

It writes ``gpu-report.json``, ``gpu-report.md`` and ``gpu-logs.txt`` under ``$OUT`` when that
variable is set, else under ``bench-results/``; the report is rewritten after every stage, so a
run cut short still leaves what it had. Exit status: 0 when every stage passed (or there is no
GPU), 1 otherwise.

Only the standard library is imported here: the interpreter may lack torch, and the package
is imported only by the stages, after the build.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUDGET_S = 460  # the whole run, build included: under 8 minutes on an H200
INTERRUPT_GRACE_S = 15  # a stage past its limit gets this long to save what it has

# Test modules that run on the GPU, with the pytest arguments that select their GPU tests
# (tests/test_gpu_check.py checks that every module that needs a GPU is listed here).
GPU_TEST_MODULES = {
    "tests/test_gpu.py": [],
    "tests/test_cuda_gpu.py": [],
    "tests/test_projection_cuda_gpu.py": [],
    "tests/test_projection_triton.py": [],  # the whole module runs on CUDA tensors when there is a GPU
    "tests/test_element_triton.py": [],  # likewise
    "tests/test_element_gpu.py": [],
    "tests/test_abs_topk_triton.py": [],  # the whole module runs on CUDA tensors when there is a GPU
    "tests/test_abs_topk_gpu.py": [],
    "tests/test_bench_cli.py": ["-m", "gpu"],
    "tests/test_entry_points.py": ["-m", "gpu"],
    "tests/test_module_inputs.py": ["-m", "gpu"],
}

# The GPU benchmark: a few densities and block sides at one large shape, both passes that
# matter for training; every backend that can run plus cuBLAS (dense) and torch's CSR.
BENCH_ARGS = ["--device", "cuda", "--dtypes", "bf16,fp16,tf32,fp32", "--shapes", "8192x4096x4096",
              "--densities", "0.0625,0.25", "--block-sizes", "32,128", "--passes", "forward,backward",
              "--peers", "csr", "--repeats", "10", "--warmup", "2", "--no-progress", "--no-plot"]

# The element format's GPU benchmark: its own sweep (d_model 2048, an MLP of 8192) in bf16 at the
# densities where CUDA-core kernels should beat cuBLAS, against cuBLAS and torch's CSR.
ELEMENT_BENCH_ARGS = ["--device", "cuda", "--format", "element", "--dtypes", "bf16",
                      "--densities", "0.015625,0.00390625", "--passes", "forward,forward+backward",
                      "--peers", "csr", "--repeats", "10", "--warmup", "2", "--no-progress", "--no-plot"]

# (stage kind, its own limit in seconds, the least it is worth starting with)
LIMITS = {"probe": (60, 10), "build": (240, 60), "extension": (60, 10), "tests": (170, 20), "bench": (150, 40)}

PROBE = r"""
import json, torch
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None}
try:
    import triton
    info["triton"] = triton.__version__
except Exception as err:
    info["triton"] = None
    info["triton_error"] = f"{type(err).__name__}: {err}"
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, capability=[props.major, props.minor], devices=torch.cuda.device_count(),
                memory_gib=round(props.total_memory / 2**30, 1))
print("PROBE " + json.dumps(info))
"""

EXTENSION = r"""
import json, torch, sparsekern
from sparsekern import _extension, projection
module = _extension.extension()
info = {"built_with": getattr(module, "built_with", None), "why_not": _extension.unavailable_reason()}
for dtype in (torch.bfloat16, torch.float16, torch.float32):
    name = str(dtype).replace("torch.", "")
    info[f"matmul_backends_{name}"] = sparsekern.available_backends("cuda", dtype)
    info[f"projection_backends_{name}"] = sparsekern.projection_backends("cuda", dtype)
print("EXTENSION " + json.dumps(info, default=str))
# On a GPU machine the CUDA C++ kernels must have been built: without them every test of the
# cuda backend would skip and the run would look green.
missing = [k for k, v in info.items() if "_backends_" in k and "cuda" not in v]
if missing:
    raise SystemExit("the cuda backend cannot run on this GPU (" + ", ".join(missing) + "): "
                     + str(info["why_not"] or info["built_with"]))
"""


# ------------------------------------------------------------------ stages
class Run:
    """One gpu-check run: its stages, their outcomes and the report files."""

    def __init__(self, python: str, out_dir: str, budget_s: float = BUDGET_S):
        self.python = python
        self.out_dir = out_dir
        self.work = tempfile.mkdtemp(prefix="gpu-check-")
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.report = {"schema": 1, "started": _now(), "finished": None, "budget_s": budget_s,
                       "machine": _host_facts(), "stages": [], "tests": [], "bench": None, "bench_element": None}
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        PYTHONUNBUFFERED="1")
        self.env.pop("TRITON_INTERPRET", None)  # the GPU, not the interpreter
        self.env["SPARSEKERN_EXPECT_CUDA"] = "1"  # the GPU tests then insist on the cuda backend

    def stage_limit(self, kind: str, later: list[str]) -> float:
        """This stage's limit: its own, or less so that the later stages keep their minimum."""
        own, _ = LIMITS[kind]
        reserved = sum(LIMITS[k][1] for k in later)
        return max(0.0, min(own, self.deadline - time.monotonic() - reserved))

    def stage(self, name: str, kind: str, command: list[str], later: list[str], env=None, write=True) -> dict:
        limit = self.stage_limit(kind, later)
        log = os.path.join(self.work, name.replace("/", "_").replace(":", "-") + ".log")
        record = {"name": name, "command": " ".join(command), "limit_s": round(limit, 1), "log": log}
        if limit < LIMITS[kind][1]:
            record.update(status="skipped", rc=None, wall_s=0.0,
                          tail=f"not started: {limit:.0f} s left of the budget, {LIMITS[kind][1]} s needed")
        else:
            record.update(run_limited(command, limit, log, env or self.env, cwd=ROOT))
        self.report["stages"].append(record)
        print(f"gpu-check: {name}: {record['status']} ({record['wall_s']:.1f} s of {limit:.0f} s)", flush=True)
        if write:
            self.write()
        return record

    def write(self) -> None:
        self.report["wall_s"] = round(time.monotonic() - self.start, 1)
        write_report(self.report, self.out_dir)


def default_sigint() -> None:
    """In a child before exec: SIGINT back to its default (Python then raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_limited(command: list[str], limit_s: float, log_path: str, env: dict, cwd: str) -> dict:
    """Run ``command`` for at most ``limit_s`` seconds, its output into ``log_path``.

    A command past its limit is interrupted (SIGINT: pytest then still writes its JUnit report
    of the tests so far, and the benchmark saves the cases it finished), then, after a grace
    period, ended with its whole process group (pytest's workers, ninja's compilers), so nothing
    it started keeps the GPU busy for the next stage.
    """
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        # The child gets SIGINT's default back: started from a background job, it would inherit
        # SIG_IGN, and the interrupt that lets pytest write its report would do nothing.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True, preexec_fn=default_sigint)
        try:
            rc = proc.wait(timeout=limit_s)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGINT, INTERRUPT_GRACE_S), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc, status = proc.returncode, "timeout"
    with open(log_path, "rb") as f:
        tail = f.read()[-4000:].decode("utf-8", "replace")
    return {"status": status, "rc": rc, "wall_s": round(time.monotonic() - t0, 1), "tail": tail}


def _marked_json(text: str, marker: str) -> dict | None:
    for line in text.splitlines():
        if line.startswith(marker + " "):
            return json.loads(line[len(marker) + 1:])
    return None


def _gpu_arch(capability) -> str:
    """TORCH_CUDA_ARCH_LIST for the GPU found: sm_90 and later with the arch-specific 'a'
    features (wgmma), which the kernels use."""
    major, minor = capability
    return f"{major}.{minor}a" if major >= 9 else f"{major}.{minor}"


def run_all(python: str, out_dir: str, budget_s: float = BUDGET_S, modules=None, bench=True) -> int:
    run = Run(python, out_dir, budget_s)
    machine = run.report["machine"]
    probe = run.stage("probe", "probe", [python, "-c", PROBE], later=["build", "extension", "tests", "bench"],
                      write=False)  # no report at all where there is no GPU
    info = _marked_json(_read(probe["log"]), "PROBE")
    if info is None or not info.get("gpu"):
        if machine.get("nvidia_smi"):  # a GPU is there, but this Python cannot use it: a real failure
            why = ("cannot import torch" if info is None else "torch sees no CUDA device "
                   f"(torch {info['torch']}, CUDA {info['cuda']})")
            print(f"gpu-check: the machine has {machine['nvidia_smi']} but {python} {why}; see {probe['log']}",
                  file=sys.stderr)
            return 1
        why = "no torch in " + python if info is None else "torch sees no CUDA device"
        print(f"gpu-check: no GPU here ({why}; nvidia-smi finds none): nothing to check.")
        shutil.rmtree(run.work, ignore_errors=True)
        return 0
    machine.update(info)

    build_env = dict(run.env, TORCH_CUDA_ARCH_LIST=_gpu_arch(info["capability"]),
                     MAX_JOBS=str(os.cpu_count() or 4))
    run.stage("build", "build", [python, "setup.py", "build_ext", "--inplace"],
              later=["extension", "tests", "bench"], env=build_env)
    ext = run.stage("extension", "extension", [python, "-c", EXTENSION], later=["tests", "bench"])
    machine["extension"] = _marked_json(_read(ext["log"]), "EXTENSION")

    modules = [m for m in GPU_TEST_MODULES if modules is None or any(part in m for part in modules)]
    for i, module in enumerate(modules):
        xml_path = os.path.join(run.work, os.path.basename(module) + ".xml")
        command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={xml_path}",
                   module, *GPU_TEST_MODULES[module]]
        later = ["tests"] * (len(modules) - i - 1) + (["bench", "bench"] if bench else [])
        record = run.stage(f"tests:{module}", "tests", command, later=later)
        outcomes = parse_junit(xml_path, module, record["status"])
        record["status"] = module_status(record["status"], outcomes)
        run.report["tests"] += outcomes
        run.write()

    if bench:
        bench_dir = os.path.join(run.work, "bench")
        run.stage("bench", "bench", [python, "-m", "sparsekern.bench", *BENCH_ARGS, "--out", bench_dir],
                  later=["bench"])
        run.report["bench"] = _load_bench(bench_dir)
        element_dir = os.path.join(run.work, "bench-element")
        run.stage("bench:element", "bench",
                  [python, "-m", "sparsekern.bench", *ELEMENT_BENCH_ARGS, "--out", element_dir], later=[])
        run.report["bench_element"] = _load_bench(element_dir)
    run.report["finished"] = _now()
    run.write()
    failed = [s["name"] for s in run.report["stages"] if s["status"] != "passed"]
    bad_tests = [t for t in run.report["tests"] if t["outcome"] in ("failed", "error")]
    print(f"gpu-check: {len(run.report['stages']) - len(failed)}/{len(run.report['stages'])} stages passed, "
          f"{len(bad_tests)} test(s) failed; report in {out_dir}")
    return 1 if failed or bad_tests else 0


def module_status(stage_status: str, outcomes: list[dict]) -> str:
    """A test stage's status: pytest's, except that a module none of whose tests passed has
    checked nothing on a GPU machine (every test skipped): "failed"."""
    if stage_status == "passed" and not any(t["outcome"] == "passed" for t in outcomes):
        return "failed"
    return stage_status


def parse_junit(path: str, module: str, stage_status: str) -> list[dict]:
    """Each test's outcome from pytest's JUnit XML; a module that left no XML (it timed out or
    did not start) becomes one entry saying so."""
    if not os.path.exists(path):
        return [{"module": module, "name": "(module)", "outcome": "not run" if stage_status == "skipped" else
                 stage_status, "time_s": None, "message": "no JUnit report (the stage did not finish)"}]
    tests = []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        return [{"module": module, "name": "(module)", "outcome": "error", "time_s": None,
                 "message": f"unreadable JUnit report: {err}"}]
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip()
                break
        tests.append({"module": module, "name": case.get("name"), "outcome": outcome,
                      "time_s": float(case.get("time") or 0.0), "message": message[:500]})
    return tests


def _load_bench(bench_dir: str) -> dict | None:
    paths = sorted(p for p in (os.listdir(bench_dir) if os.path.isdir(bench_dir) else []) if p.endswith(".json"))
    if not paths:
        return None
    with open(os.path.join(bench_dir, paths[-1])) as f:
        return json.load(f)


# ------------------------------------------------------------------ the report
def write_report(report: dict, out_dir: str) -> dict[str, str]:
    """``gpu-report.json``, ``gpu-report.md`` and ``gpu-logs.txt`` (every stage's log tail) in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"gpu-{name}") for name in ("report.json", "report.md", "logs.txt")}
    with open(paths["report.json"], "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(paths["report.md"], "w") as f:
        f.write(render_markdown(report))
    with open(paths["logs.txt"], "w") as f:
        for stage in report["stages"]:
            f.write(f"===== {stage['name']}: {stage['status']} (rc {stage['rc']}, {stage['wall_s']} s)\n")
            f.write(f"$ {stage['command'][:2000]}\n{_read(stage.get('log'), limit=200_000) or stage.get('tail', '')}\n")
    return paths


def render_markdown(report: dict) -> str:
    m = report["machine"]
    ext = m.get("extension") or {}
    lines = [
        "# sparsekern gpu-check",
        "",
        f"- GPU: {m.get('gpu') or 'none'} (compute capability {'.'.join(map(str, m.get('capability') or [])) or '-'}, "
        f"{m.get('memory_gib', '-')} GiB; driver {m.get('driver') or 'unknown'})",
        f"- host: {m.get('cpu_count')} CPUs, Python {m.get('python')}; torch {m.get('torch')} (CUDA {m.get('cuda')}), "
        f"triton {m.get('triton')}",
        f"- commit {m.get('commit') or 'unknown'}; started {report['started']}, "
        f"{report.get('wall_s', '-')} s of a {report['budget_s']} s budget",
        f"- extension built with: {ext.get('built_with', '-')}; matmul backends on the GPU (bf16): "
        f"{', '.join(ext.get('matmul_backends_bfloat16') or []) or '-'}",
        "",
        "## Stages",
        "",
        "| stage | status | seconds | limit |",
        "|---|---|---|---|",
    ]
    for s in report["stages"]:
        lines.append(f"| {s['name']} | {s['status']} | {s['wall_s']} | {s['limit_s']} |")
    lines += ["", "## Tests", ""]
    tests = report["tests"]
    if tests:
        lines += ["| module | passed | failed | error | skipped | other |", "|---|---|---|---|---|---|"]
        for module in dict.fromkeys(t["module"] for t in tests):
            these = [t["outcome"] for t in tests if t["module"] == module]
            counts = [these.count(o) for o in ("passed", "failed", "error", "skipped")]
            lines.append(f"| {module} | " + " | ".join(map(str, counts)) + f" | {len(these) - sum(counts)} |")
        notable = [t for t in tests if t["outcome"] != "passed"]
        if notable:
            lines += ["", "Not passed:", ""]
            for t in notable:
                message = " ".join(t["message"].split())[:300]
                lines.append(f"- {t['outcome']}: `{t['module']}::{t['name']}`: {message}")
    else:
        lines.append("No test ran.")
    lines += ["", "## Benchmark", ""]
    lines += bench_markdown(report.get("bench"))
    lines += ["", "## Benchmark: the element format", ""]
    lines += bench_markdown(report.get("bench_element"))
    return "\n".join(lines) + "\n"


def bench_markdown(bench: dict | None) -> list[str]:
    """One table per pass: each case's implementations side by side, x dense and the check."""
    if not bench or not bench.get("rows"):
        return ["No benchmark result."]
    out = ["`ms`: median of CUDA-event times after an L2 flush; `x dense` = cuBLAS time / time "
           "(dense runs in the same dtype: TF32 rows with TF32 on for both); `check`: verified against fp64 "
           "before timing.", ""]
    rows = bench["rows"]
    for pass_ in dict.fromkeys(r["pass"] for r in rows):
        out += [f"### {pass_}", "", "| dtype | MxNxK | block | density | impl | ms | useful TFLOP/s | x dense | check |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["pass"] == pass_):
            cells = f"| {r['dtype']} | {r['m']}x{r['n']}x{r['k']} | {r['block']} | {r['density']:g} | {r['impl']} |"
            if r["status"] == "ok":
                out.append(f"{cells} {_num(r.get('time_ms'), '.4g')} | {_num(r.get('tflops'), '.3g')} | "
                           f"{_num(r.get('speedup'), '.2f')} | ok |")
            else:
                out.append(f"{cells} - | - | - | {r['status']}: {' '.join(str(r.get('note', '')).split())[:120]} |")
        out.append("")
    return out


# ------------------------------------------------------------------ helpers
def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _read(path: str | None, limit: int | None = None) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        data = f.read()
    if limit is not None and len(data) > limit:
        data = b"[... cut ...]\n" + data[-limit:]
    return data.decode("utf-8", "replace")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _host_facts() -> dict:
    facts = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "nvidia_smi": None,
             "driver": None, "commit": os.environ.get("SPARSEKERN_COMMIT") or _git_commit()}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
            if first:
                name, _, driver = first.rpartition(",")
                facts.update(nvidia_smi=name.strip(), driver=driver.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    return facts


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="the interpreter with torch and triton (default: this one)")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "bench-results"),
                   help="where the report goes (default: $OUT, else bench-results/)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole run (default {BUDGET_S})")
    p.add_argument("--modules", help="comma-separated parts of test module names: run only those (a second, "
                                     "shorter run)")
    p.add_argument("--no-bench", action="store_true", help="skip the benchmark stage")
    args = p.parse_args(argv)
    modules = [m.strip() for m in args.modules.split(",") if m.strip()] if args.modules else None
    return run_all(args.python, args.out, args.budget, modules=modules, bench=not args.no_bench)


if __name__ == "__main__":
    sys.exit(main())

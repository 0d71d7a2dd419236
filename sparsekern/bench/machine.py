"""What a saved result was measured on: machine, versions, commit."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess

import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(device: torch.device) -> dict:
    """Machine, versions and commit, for every saved result."""
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "sparsekern": _version("sparsekern"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "load_average": load_average(),  # the machine may be shared: how busy it was at the start
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, compute_capability=f"{props.major}.{props.minor}",
                    cuda=torch.version.cuda, tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


def headline(info: dict) -> str:
    """One line naming the machine."""
    where = info.get("gpu") or f"{info['cpu']}, {info['threads']} threads"
    commit = (info.get("commit") or "unknown")[:10] + ("+dirty" if info.get("dirty") else "")
    return f"{where} | torch {info['torch']} | triton {info.get('triton')} | commit {commit}"


def busy_warning(info: dict) -> str | None:
    """A warning when other work keeps the CPU busy (on a CPU run, every time is then noisy)."""
    load, cores = info.get("load_average"), info.get("cpu_count") or 1
    if info["device"] != "cpu" or not load or load[0] < 0.75 * cores:
        return None
    return (f"warning: the machine is busy (load {load[0]:g} on {cores} cores): CPU times will be noisy. "
            f"Speedups are measured side by side, interleaved, but re-run on an idle machine for figures "
            f"to quote (--threads 1 is steadier on a shared one).")

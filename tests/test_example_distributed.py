"""examples/train_distributed.py under torchrun: FSDP2 on 2 CPU processes ends with the weights
and layouts of the same training in one process, bitwise (a tiny configuration, ~30 s)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--d-model", "32", "--n-layers", "1", "--n-heads", "2", "--d-mlp", "128", "--ctx", "32",
        "--batch-size", "4", "--steps", "6", "--density", "0.25", "--max-train-bytes", "200000",
        "--max-val-bytes", "120000", "--log-every", "3"]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_fsdp2_example_matches_one_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(ROOT / "examples" / "train_distributed.py"), *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "weights and layouts bitwise equal" in proc.stdout, out[-4000:]
    # FSDP2 warns at every forward of a module returning a view (SparseLinear, AbsTopK did).
    assert "returned a view tensor" not in out, out[-4000:]
    assert "[fsdp2 ] step    6/6" in proc.stdout and "[single] step    6/6" in proc.stdout, out[-4000:]

#!/usr/bin/env bash
# `make gpu-versions`: the GPU machine's torch and triton (torch 2.11 for CUDA 13.0, triton 3.6;
# see ../shared/GPU.md), proven on this machine so that the first GPU run is not spent on an API
# difference. In a venv of their own: the package built against them from a copy of the tree
# (CUDA kernels included, for sm_90a, as gpu-check builds them on an H200), imported, run on the
# CPU, and every Triton kernel compiled ahead of time with that triton (tools/gpu_versions_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
VENV=$(realpath -m "${VENV:-.venv-gpu-versions}")
TORCH=2.11.0
TRITON=3.6.0
SRC=$ROOT/build/gpu-versions/src

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$VENV/.deps-$TORCH-$TRITON" ]; then
    "$VENV/bin/python" -m pip install --quiet "torch==$TORCH" "triton==$TRITON" numpy pybind11 ninja  # setuptools: what the venv has (65), as an older GPU python might
    touch "$VENV/.deps-$TORCH-$TRITON"
fi

# The tree as git sees it (tracked, and untracked but not ignored), modification times kept so
# that ninja rebuilds only what changed; the old sources go first, so a deleted file is gone.
mkdir -p "$SRC"
rm -rf "$SRC/csrc" "$SRC/sparsekern" "$SRC/setup.py"
git ls-files -co --exclude-standard -z -- csrc sparsekern setup.py pyproject.toml tools \
    | tar --null -T - -cf - | tar -xf - -C "$SRC"

cd "$SRC"
# Without nvcc (CUDA_HOME or PATH) setup.py builds the CPU kernels only; the check then says so.
WITH_CUDA=1
if ! command -v nvcc > /dev/null && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
    echo "gpu-versions: no nvcc here: the CUDA kernels are not built against torch $TORCH (CPU kernels and Triton only)"
    WITH_CUDA=0
fi
TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=${MAX_JOBS:-2} "$VENV/bin/python" setup.py --quiet build_ext --inplace \
    > "$SRC/build.log" 2>&1 || { tail -50 "$SRC/build.log"; echo "gpu-versions: build against torch $TORCH failed"; exit 1; }
env -u TRITON_INTERPRET PYTHONPATH="$SRC" "$VENV/bin/python" tools/gpu_versions_check.py "$TORCH" "$TRITON" "$WITH_CUDA"

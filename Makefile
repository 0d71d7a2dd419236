# Two commands do everything on a fresh machine:
#   make test   set up .venv (torch, triton, the package and its extension) and run the suite
#   make bench  set up .venv and run the default benchmark
# On a machine with an NVIDIA GPU, with torch and triton already installed in $(PYTHON):
#   make gpu-check   build for that GPU, run every GPU test and a short GPU benchmark; report in $$OUT or bench-results/
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS := test,bench,triton
SOURCES := $(shell find csrc sparsekern -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: test bench bench-peers bench-recipe demo circuits distributed install clean gpu-check gpu-versions

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.deps: requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The package, built against .venv's torch (no isolation), with its extras: pyproject.toml is the one
# list of the test and bench packages (requirements-dev.txt: the torch pin and the build tools).
$(VENV)/.installed: $(VENV)/.deps setup.py pyproject.toml $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

test: install gpu-versions
	$(PY) -m pytest -q tests

# Everything that needs a GPU, in one command with a time budget (sparsekern/bench/gpu_check.py).
# It installs nothing and uses $(PYTHON) as it is; without a GPU it says so and exits 0.
# GPU_CHECK_ARGS: e.g. "--modules test_cuda_gpu --no-bench" for a second, shorter run.
gpu-check:
	$(PYTHON) sparsekern/bench/gpu_check.py $(GPU_CHECK_ARGS)

# The GPU machine's versions (torch 2.11, triton 3.6), proven here: a separate venv, the package
# built against them (CUDA kernels included, for sm_90a) from a copy of the tree, imported, and
# every Triton kernel compiled ahead of time with that triton (tools/gpu_versions.sh).
GPU_VERSIONS_VENV ?= .venv-gpu-versions
gpu-versions: $(GPU_VERSIONS_VENV)/.checked

$(GPU_VERSIONS_VENV)/.checked: tools/gpu_versions.sh setup.py $(SOURCES) $(shell find sparsekern -name '*.py')
	PYTHON=$(PYTHON) VENV=$(GPU_VERSIONS_VENV) bash tools/gpu_versions.sh
	touch $@

# The default benchmark (headline sweep; BENCH_ARGS="--full" for the large one). Results go to bench-results/.
bench: install
	$(PY) -m sparsekern.bench $(BENCH_ARGS)

# Circuits (sparsekern.circuits): a dense and a weight-sparse GPT of the example pruned to their smallest
# circuits on two tasks at the same target losses; table, circuits and picture in examples/out/circuits/.
# About 50 minutes on 2 shared cores the first time (training both models), about 17 after. CIRCUITS_ARGS to change it.
circuits: install
	$(PY) examples/prune_circuit.py $(CIRCUITS_ARGS)

# The example's recipe under FSDP2 on 2 CPU processes (gloo), checked bitwise against one process
# (examples/train_distributed.py; DISTRIBUTED_ARGS to change it).
distributed: install
	OMP_NUM_THREADS=1 $(PY) -m torch.distributed.run --standalone --nproc-per-node $${NPROC:-2} \
		examples/train_distributed.py $(DISTRIBUTED_ARGS)

# One training step of the published MLP block, sparsekern against the published way, with the
# breakdown by phase (sparsekern/bench/recipe.py; RECIPE_ARGS, e.g. "--threads 2 --steps 9").
bench-recipe: install
	$(PY) -m sparsekern.bench.recipe $(RECIPE_ARGS)

# SparseProp (pip install sparseprop), the optional peer of `sparsekern-bench --format element`; not in
# requirements-dev.txt (CI does not need it). Its setup.py finds pybind11's headers with `python3 -m
# pybind11` from PATH, so the venv goes first on PATH and builds without isolation (a plain
# `pip install sparseprop` finds no headers unless the system python3 has pybind11); setuptools>=77 from
# requirements-dev.txt builds the wheel. Compiled with -march=native: for this machine only.
bench-peers: $(VENV)/.deps
	$(PY) -m pip install --quiet pybind11 scipy
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m pip install --quiet --no-build-isolation sparseprop

# The end-to-end example at its default size: the published weight-sparse recipe trained three ways
# (sparsekern, the published masked-dense way, dense) taking turns, 4 layers of d_model 512 at
# density 1/64; about 6 minutes on 2 idle CPU cores (DEMO_ARGS to change it). Results go to examples/out/.
demo: install
	$(PY) examples/train_sparse_gpt.py $(DEMO_ARGS)

clean:
	rm -rf build *.egg-info sparsekern/_C*.so $(VENV)/.installed $(GPU_VERSIONS_VENV)/.checked

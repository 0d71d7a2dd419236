# Two commands do everything on a fresh machine:
#   make test   set up .venv (torch, triton, the package and its extension) and run the suite
#   make bench  set up .venv and run the default benchmark
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SOURCES := $(shell find csrc sparsekern -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: test bench demo install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.deps: requirements-dev.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.installed: $(VENV)/.deps setup.py pyproject.toml $(SOURCES)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

# The default benchmark (headline sweep; BENCH_ARGS="--full" for the large one). Results go to bench-results/.
bench: install
	$(PY) -m sparsekern.bench $(BENCH_ARGS)

# The end-to-end example at its default size (a few minutes on a CPU; DEMO_ARGS to change it).
# Results go to examples/out/.
demo: install
	$(PY) examples/train_sparse_gpt.py $(DEMO_ARGS)

clean:
	rm -rf build *.egg-info sparsekern/_C*.so $(VENV)/.installed

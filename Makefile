# Two entry points on a bare machine (Python 3.11 + pip): `make demo` and `make test`.
# Both create .venv, install the pinned requirements and build the extension first.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
# torch's CUDAExtension compiles the CUDA kernel when nvcc is found (it cannot run without a GPU).
CUDA_HOME ?= $(shell [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda)
export CUDA_HOME
export MAX_JOBS ?= 2

SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu csrc/*.cuh)

.PHONY: all venv build demo test test-all bench bench-cpu check clean

all: test

$(VENV)/.deps: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip setuptools wheel
	$(VPY) -m pip install --quiet -r requirements.txt
	$(VPY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

# (Re)build the extension whenever a C++/CUDA source or setup.py changes.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

venv: $(VENV)/.built
build: $(VENV)/.built

# The main job: cross-check every backend, then train β-TCVAE, β-VAE (both β = 6) and a VAE on
# the built-in shapes data (about 10 minutes of training on 2 CPU cores), compare them, write the
# pictures; the last line printed starts with `result:`. DEMO_ARGS="--seeds 0 1 2" for the README's table.
DEMO_OUT ?= python/out/demo
DEMO_ARGS ?=
demo: $(VENV)/.built
	$(VPY) -m tcvae_kernels check
	$(VPY) python/demo.py --out $(DEMO_OUT) $(DEMO_ARGS)

# The CI suite (benchmarks excluded; run them with `make bench`).
test: $(VENV)/.built
	$(VPY) -m pytest -q tests

bench: $(VENV)/.built
	-$(VPY) -m pip install --quiet pykeops
	$(VPY) -m tcvae_kernels bench --full --out bench/out/cpu_full
	$(VPY) -m tcvae_kernels bench --methods cpu --sizes 1024 2048 4096 8192 16384 --dims 10 32 --out bench/out/cpu_scaling
	$(VPY) bench/bench_mig.py
	$(VPY) bench/bench_groups.py
	$(VPY) bench/bench_metrics.py

clean:
	rm -rf build *.egg-info tcvae_kernels/*.so bench/out .pytest_cache

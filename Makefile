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

.PHONY: all help venv build demo test test-slow test-all test-disent coverage sanitize docs bench clean

all: test

# `make help`: one line per target (tests/repository/test_layout.py checks each names a rule of this file).
help:
	@echo "make demo       set up .venv, cross-check every backend, train and compare 3 models"
	@echo "make test       set up .venv, run the default test tier"
	@echo "make test-slow  the slow tier (heavy repetitions of the default tier's paths)"
	@echo "make test-all   both tiers"
	@echo "make test-disent the disent drop-in's tests in a Python 3.12 venv (.venv-disent; skipped without 3.12)"
	@echo "make coverage   line coverage of tcvae_kernels/ by the default tier and by both"
	@echo "make sanitize   the C++ code's tests under ASan + UBSan (build/sanitize)"
	@echo "make docs       the documentation site into docs/_build/html (warnings are errors)"
	@echo "make bench      the CPU benchmarks (bench/RESULTS.md)"
	@echo "make build      set up .venv and build the extension (also: make venv)"
	@echo "make clean      remove build outputs"

$(VENV)/.deps: requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip "setuptools<85" wheel
	$(VPY) -m pip install --quiet -r requirements.txt
	$(VPY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

# (Re)build the extension whenever a C++/CUDA source or setup.py changes. editable_mode=compat: a
# path entry for the source tree, which mypy and IDEs resolve (setuptools' default editable mode is an
# import hook they cannot follow); setuptools < 85 keeps that mode.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps --config-settings editable_mode=compat -e .
	touch $@

venv: $(VENV)/.built
build: $(VENV)/.built

# The main job: cross-check every backend, then train β-TCVAE, β-VAE (both β = 6) and a VAE on
# the built-in shapes data (6 to 8 minutes of training on 2 CPU cores with AVX2), compare them, write the
# pictures; the last line printed starts with `result:`. DEMO_ARGS="--seeds 0 1 2" for the table in docs/demo.md.
DEMO_OUT ?= python/out/demo
DEMO_ARGS ?=
demo: $(VENV)/.built
	$(VPY) -m tcvae_kernels check
	$(VPY) python/demo.py --out $(DEMO_OUT) $(DEMO_ARGS)

# The tests, in two tiers (pyproject.toml; docs/contributing.md): `make test` runs the default tier, which
# covers every code path at small sizes; `make test-slow` the heavy repetitions of the same paths;
# `make test-all` both (what CI runs, one tier after the other). Benchmarks: `make bench`.
# pytest-xdist spreads the tests over the cores (PYTEST_WORKERS=0: one process).
PYTEST_WORKERS ?= auto
PYTEST := $(VPY) -m pytest -q -n $(PYTEST_WORKERS) --durations=15
test: $(VENV)/.built
	$(PYTEST) tests

test-slow: $(VENV)/.built
	$(PYTEST) -m slow tests

test-all: test test-slow

# The disent drop-in: disent needs Python >= 3.12, so its tests run in their own venv (torch, disent,
# pytest) with the package from this tree (the abi3 extension built by `make build` loads there too).
PYTHON312 ?= $(shell for p in python3.12 $$(pyenv root 2>/dev/null)/versions/3.12*/bin/python3.12 \
                /root/.pyenv/versions/3.12*/bin/python3.12; do "$$p" -c '' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
DISENT_VENV := .venv-disent
$(DISENT_VENV)/.deps:
	$(PYTHON312) -m venv $(DISENT_VENV)
	$(DISENT_VENV)/bin/python -m pip install --quiet torch==2.14.1 disent==0.9.3 pytest
	touch $@
ifeq ($(PYTHON312),)
test-disent:
	@echo "test-disent: skipped, no Python 3.12 found (disent needs Python >= 3.12)"
else
test-disent: $(VENV)/.built $(DISENT_VENV)/.deps
	PYTHONPATH=$(CURDIR):$(CURDIR)/tests $(DISENT_VENV)/bin/python -m pytest -q -p no:cacheprovider -o addopts="" \
	  --confcutdir=tests/integrations tests/integrations/test_disent.py
endif

# Line coverage of tcvae_kernels/ by the default tier and by both tiers (docs/contributing.md).
coverage: $(VENV)/.built
	$(PYTEST) --cov=tcvae_kernels --cov-report= tests
	$(VPY) -m coverage report --format=total --precision=1 > .coverage-default
	$(PYTEST) --cov=tcvae_kernels --cov-report= -m slow --cov-append tests
	@echo "line coverage of tcvae_kernels/: default tier $$(cat .coverage-default)%, both tiers $$($(VPY) -m coverage report --format=total --precision=1)%"
	@rm -f .coverage-default

# The C++ code (the CPU kernel and the CUDA kernels' CPU emulation) under AddressSanitizer and
# UndefinedBehaviorSanitizer: built in a copy of the tree (build/sanitize, never into .venv), its
# C++-facing tests run there with the runtimes preloaded; the first report of any kind fails.
# Suppressions (for Python and torch, never for this code) and why leaks are not checked:
# tests/sanitizers.supp.
SANITIZE_DIR   := build/sanitize
SANITIZE_TESTS := tests/kernels/test_cpu_kernel.py tests/kernels/test_cuda_kernel.py tests/kernels/test_edge_cases.py \
                  tests/kernels/test_backends.py tests/kernels/test_groups.py tests/estimates/test_regime.py
SANITIZE_RT    := $(shell g++ -print-file-name=libasan.so):$(shell g++ -print-file-name=libubsan.so)
sanitize: $(VENV)/.deps
	rm -rf $(SANITIZE_DIR) && mkdir -p $(SANITIZE_DIR)
	git ls-files -z --cached --others --exclude-standard | xargs -0 sh -c \
	  'for f; do if [ -e "$$f" ]; then cp --parents "$$f" $(SANITIZE_DIR)/; fi; done' copy
	cd $(SANITIZE_DIR) && TCVAE_SANITIZE=address,undefined $(abspath $(VPY)) setup.py -q build_ext --inplace
	cd $(SANITIZE_DIR) && LD_PRELOAD=$(SANITIZE_RT) \
	  ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=0:log_path=$(CURDIR)/$(SANITIZE_DIR)/report:suppressions=$(CURDIR)/tests/sanitizers.supp \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$(CURDIR)/$(SANITIZE_DIR)/report:suppressions=$(CURDIR)/tests/sanitizers.supp \
	  $(abspath $(VPY)) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) -k "not triton" \
	    --sanitized-build=address,undefined $(SANITIZE_TESTS) \
	  || { cat $(CURDIR)/$(SANITIZE_DIR)/report.* 2>/dev/null | cut -c1-240 | head -30; exit 1; }
	@if ls $(SANITIZE_DIR)/report.* >/dev/null 2>&1; then cut -c1-240 $(SANITIZE_DIR)/report.* | head -30; exit 1; fi

# The documentation site (docs/: Sphinx + furo + MyST, the API reference from the docstrings), built
# from scratch with warnings as errors (-W -n: a broken cross-reference, a dead internal link or a
# malformed docstring fails). Its dependencies: the `docs` extra of pyproject.toml.
DOCS_DEPS = $(shell $(PYTHON) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['docs']))")
docs: $(VENV)/.built
	$(VPY) -m pip install --quiet $(foreach d,$(DOCS_DEPS),"$(d)")
	rm -rf docs/_build
	$(VPY) -m sphinx -E -W -n --keep-going -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

bench: $(VENV)/.built
	-$(VPY) -m pip install --quiet pykeops
	$(VPY) -m tcvae_kernels bench --full --out bench/out/cpu_full
	$(VPY) -m tcvae_kernels bench --methods cpu --sizes 1024 2048 4096 8192 16384 --dims 10 32 --out bench/out/cpu_scaling
	$(VPY) bench/bench_mig.py
	$(VPY) bench/bench_groups.py
	$(VPY) bench/bench_metrics.py

clean:
	rm -rf build *.egg-info tcvae_kernels/*.so bench/out .pytest_cache .coverage .coverage.* docs/_build

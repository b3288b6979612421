# Set-up and entry points. Every target creates the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-slow lint format clean

# libtpu (the version jax's `tpu` extra pins) is for `python -m lln_jax.plan`'s compiles: kept
# in $(VENV)/libtpu, apart from the environment's packages, so that no training run probes
# for a TPU; the tests point TPU_LIBRARY_PATH at it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	$(VENV)/bin/python -m pip install --quiet --no-deps --target $(VENV)/libtpu libtpu==0.0.42.1
	touch $@

# The slow tier also checks the trainer against its PyTorch twin (torch, torchvision).
$(BENCH_STAMP): $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# Trains and evaluates on the embedded benchmark (a few minutes on a CPU; no download).
demo: $(STAMP)
	$(VENV)/bin/python -m lln_jax.main --config=configs/digits.py --workdir=runs/demo

# The default tier in two worker processes (pytest-xdist): its tests are independent and
# mostly single-threaded compiles. A module stays on one worker (`--dist loadfile`), so that
# its module-scoped fixtures (a whole training run) are built once. The slow tier stays in
# one process: its multi-process jobs, leases and timeouts would compete for the cores.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile

test-slow: $(BENCH_STAMP)
	$(VENV)/bin/python -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check lln_jax tests configs
	$(VENV)/bin/ruff format --check lln_jax tests configs

format: $(STAMP)
	$(VENV)/bin/ruff format lln_jax tests configs
	$(VENV)/bin/ruff check --fix lln_jax tests configs

clean:
	rm -rf $(VENV) build *.egg-info

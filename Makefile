# mergerscan: `make demo` runs the pipeline on a synthetic field; `make test` runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTEST_ARGS ?=
# two test processes: the suite waits on Dask, SLURM, servers and subprocesses about half the time
# (one process kept 1.14 of 2 cores busy); SLURM tests stay in one process (conftest.py)
PYTEST_WORKERS ?= 2

.PHONY: setup system-deps demo lint format test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned to the CPU build on purpose (a looser pin pulls GBs of CUDA wheels)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[train,slurm,fast,dev]'
	touch $@

setup: $(VENV)/.installed

# Debian tools the tests use for real: STILTS (TOPCAT's command-line twin), SLURM, Chromium.
system-deps:
	@missing=""; \
	command -v stilts >/dev/null || missing="$$missing stilts"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || missing="$$missing slurm-wlm"; \
	command -v munged >/dev/null || [ -x /usr/sbin/munged ] || missing="$$missing munge"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	    || echo "note: apt-get could not install$$missing (tests that need them will skip)"; \
	  else echo "note: missing$$missing (tests that need them will skip)"; fi; fi

demo: setup
	$(BIN)/python -m mergerscan.demo demo-out/field
	$(BIN)/process-catalog demo-out/field/demo-catalog.fits --frames demo-out/field -o demo-out/run \
	    --keep-columns truth,mag_r,redshift --overwrite

# ruff (lint + format; in src/ and tools/ also the function-size rules C901, PLR0912, PLR0915) over the tree,
# mypy over catalogs, pipeline and engines (pyproject.toml); tests/test_architecture.py (run by
# `make test`) caps functions at 80 lines
lint: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools
	$(BIN)/mypy

format: setup
	$(BIN)/ruff check --fix src tests benchmarks tools
	$(BIN)/ruff format src tests benchmarks tools

test: setup system-deps lint
	$(BIN)/python -m pytest -q -ra -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not slow" -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

clean:
	rm -rf demo-out .pytest_cache

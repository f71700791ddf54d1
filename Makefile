# StreamChar: `make demo` and `make test` each do all set-up on a fresh machine, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.streamchar-installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-all lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/ensure-system-deps.sh
	./scripts/ensure-system-deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the pinned CPU torch first, so the package's torch range installs nothing more
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev,serve]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/streamchar demo --out out/demo

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check streamchar tests
	$(VENV)/bin/ruff format --check streamchar tests

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache

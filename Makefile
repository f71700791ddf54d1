# StreamChar: `make demo` and `make test` each do all set-up on a fresh machine, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.streamchar-installed
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: demo test test-all train-tiny lint setup system-deps clean

demo: setup
	$(VENV)/bin/streamchar demo --out out/demo.mp4

test: setup
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# the reference tiny model from corpus to shipped, evaluated model (resumable; hours on a CPU)
train-tiny: setup
	$(VENV)/bin/streamchar recipe tiny

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VENV)/bin/ruff check streamchar tests bench
	$(VENV)/bin/ruff format --check streamchar tests bench

setup: system-deps $(STAMP)

# espeak-ng, ffmpeg, chromium + chromedriver through apt when missing (checked every time; a no-op when present)
system-deps:
	@./scripts/ensure-system-deps.sh

# The pinned CPU torch first, so that the package's torch range installs nothing more. pip -qq prints errors
# only: its notices (setuptools' note on editable installs, a machine's unused index locations) are not ours.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "StreamChar needs Python 3.11 or newer; set PYTHON=python3.11 (or newer)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq torch==$(TORCH_VERSION)
	$(PY) -m pip install -qq -e ".[dev,serve]"
	touch $@

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache

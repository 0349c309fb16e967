# `make demo` and `make test` do all the set-up on a fresh machine: they create .venv unless a virtual
# environment is already active, install torch (pinned, CPU wheel where the machine offers one) first so
# that pip does not resolve a CUDA build, then install sftpipe with every other package at the version in
# requirements/lock.txt (the versions the test suite last passed with; `make lock` refreshes it).
TORCH_VERSION ?= 2.13.0
LOCK := requirements/lock.txt

ifeq ($(VIRTUAL_ENV),)
VENV := .venv
else
VENV := $(VIRTUAL_ENV)
endif
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.sftpipe-installed
DEV_STAMP := $(VENV)/.sftpipe-dev-installed
LOCK_VENV := .lock-venv

.PHONY: demo test install install-dev exec-tools lock wheel-check clean

demo: $(STAMP) exec-tools
	$(VENV)/bin/sftpipe demo --out demo_out

test: $(DEV_STAMP)
	$(PYTHON) -m pytest

install: $(STAMP)

install-dev: $(DEV_STAMP)

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml $(LOCK) | $(PYTHON)
	$(PYTHON) -m pip install torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -c $(LOCK) -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PYTHON) -m pip install -c $(LOCK) -e '.[dev]'
	touch $@

# GHC and bubblewrap let the demo and eval compile and run the generated Haskell (pass@k); installed with
# apt-get where this is Debian/Ubuntu as root, otherwise one line says how.
exec-tools:
	@bash scripts/exec-tools.sh

# Refresh the lock: a fresh venv takes the newest releases that pyproject.toml allows, the default test run
# must pass in it, and only then is its `pip freeze` written to $(LOCK). Commit the lock with the change.
lock:
	rm -rf $(LOCK_VENV)
	python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install torch==$(TORCH_VERSION)
	$(LOCK_VENV)/bin/python -m pip install -e '.[dev,bench]'
	$(LOCK_VENV)/bin/python -m pytest -m 'not slow and not gpu'
	$(LOCK_VENV)/bin/python scripts/write_lock.py $(LOCK_VENV)/bin/python $(LOCK)
	rm -rf $(LOCK_VENV)

# What a user without a checkout gets: the wheel, installed (not editable) into a fresh venv, run from
# another directory.
wheel-check:
	bash scripts/wheel-check.sh $(TORCH_VERSION) $(LOCK)

clean:
	rm -rf demo_out .pytest_cache build dist src/*.egg-info $(LOCK_VENV)

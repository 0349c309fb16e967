# `make demo` and `make test` do all the set-up on a fresh machine: they create .venv unless a virtual
# environment is already active, install torch (pinned, CPU wheel where the machine offers one) first so
# that pip does not resolve a CUDA build, then install sftpipe.
TORCH_VERSION ?= 2.13.0

ifeq ($(VIRTUAL_ENV),)
VENV := .venv
else
VENV := $(VIRTUAL_ENV)
endif
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.sftpipe-installed
DEV_STAMP := $(VENV)/.sftpipe-dev-installed

.PHONY: demo test install install-dev clean

demo: $(STAMP)
	$(VENV)/bin/sftpipe demo --out demo_out

test: $(DEV_STAMP)
	$(PYTHON) -m pytest

install: $(STAMP)

install-dev: $(DEV_STAMP)

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PYTHON) -m pip install -e '.[dev]'
	touch $@

clean:
	rm -rf demo_out .pytest_cache build dist src/*.egg-info

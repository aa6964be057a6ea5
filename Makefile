# The README's two commands: `make test` and `make demo`. Each does its own set-up (idempotent).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test demo setup system-deps

test: setup
	$(VENV)/bin/pytest

demo: setup
	$(VENV)/bin/python -m mailcontinuity.lab.demo

setup: system-deps $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

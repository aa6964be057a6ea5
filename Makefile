# The README's two commands: `make test` and `make demo`. Each does its own set-up (idempotent).
# Nothing here touches the machine outside temporary directories, except the target named for
# it: `make test-role-on-this-machine` (CI runs it through CI=true).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: test check lab-tests demo setup system-deps test-role-on-this-machine

test: check lab-tests

# The fast tier, first: lint, types, and the unit tests (no servers, seconds).
check: setup
	$(VENV)/bin/ruff check mailcontinuity tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest tests/unit -m "not postgres"

# The lab tier: real Postfix, Dovecot, PostgreSQL and the rest in temporary directories on
# loopback or in network namespaces, and the unit tests' PostgreSQL runs. tests/machine is
# skipped unless CI=true (see tests/machine/conftest.py).
lab-tests: setup
	$(VENV)/bin/pytest tests/unit -m postgres
	$(VENV)/bin/pytest tests/lab tests/machine

test-role-on-this-machine: setup
	MAILCONTINUITY_CHANGE_THIS_MACHINE=1 $(VENV)/bin/pytest tests/machine

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

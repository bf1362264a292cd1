# The two commands of the README: `make demo` (the main job) and `make test` (all tests).
# Both set the machine up first (idempotent): Debian packages, .venv, the test guest.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 4

.PHONY: setup deps venv guest demo test lint unit integration e2e bench clean

setup: deps venv guest

deps:
	bash hack/install-deps.sh

venv: deps
	bash hack/venv.sh

guest: deps
	bash hack/build-guest.sh

demo: setup
	$(PY) -m hack.demo

lint: venv
	bash hack/lint.sh

test: setup
	bash hack/lint.sh
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) tests

unit: venv
	$(VENV)/bin/pytest tests/unit

integration: venv
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) tests/integration

e2e: setup
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) tests/e2e

bench: setup
	$(PY) -m hack.bench

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache

# N whole VM lifetimes under the monitor (hack/soak.py): leaks, leftovers, per-cycle time.
SOAK_CYCLES ?= 100
.PHONY: soak
soak: setup
	$(PY) -m hack.soak --cycles $(SOAK_CYCLES)

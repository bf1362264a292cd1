# The two commands of the README: `make demo` (the main job) and `make test` (all tests).
# Both set the machine up first (idempotent): Debian packages, .venv, the test guest;
# `make test` also builds the launcher image (`make image`, cached) that tests/image boots.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 4

.PHONY: setup deps venv guest demo test lint unit integration e2e bench bench-hooks \
	bench-hotplug clean image image-test image-clean

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

test: setup image
	bash hack/lint.sh
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) tests

unit: venv
	$(VENV)/bin/pytest tests/unit

integration: venv
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) tests/integration

e2e: setup
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) tests/e2e

# The launcher image, built here with buildah (hack/build-image.sh: its own tools, a local
# Debian base, the layer cache; idempotent), and the tests that boot the guest from it.
image:
	bash hack/build-image.sh

image-test: setup image
	$(VENV)/bin/pytest -n 2 tests/image

# The image, the base, buildah's dangling layers (its build cache) and the base tarball.
image-clean:
	bash hack/build-image.sh --clean

bench: setup
	$(PY) -m hack.bench

# The cost of hook sidecar calls (hack/bench_hooks.py): one JSON line.
bench-hooks: setup
	$(PY) -m hack.bench_hooks

# Volume hotplug attach/detach as the guest sees it (hack/bench_hotplug.py; boots the
# test guest, as root): one JSON line.
bench-hotplug: setup
	$(PY) -m hack.bench_hotplug

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache

# N whole VM lifetimes under the monitor (hack/soak.py): leaks, leftovers, per-cycle time.
SOAK_CYCLES ?= 100
.PHONY: soak
soak: setup
	$(PY) -m hack.soak --cycles $(SOAK_CYCLES)

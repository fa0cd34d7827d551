# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# apt-get needs root; use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test bench soak lint typecheck unit integration system-deps clean help

help:
	@echo "make demo   - virtualenv, install, embedded broker + simulator + worker + live CPI table"
	@echo "              (make demo ARGS=\"--duration 60\" stops by itself)"
	@echo "make test   - install every test dependency (Debian packages included) and run the suite"
	@echo "make bench  - throughput of the worker next to a raw aiokafka loop"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[broker]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.demo-installed

system-deps:
	@if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then \
		echo "installing Debian packages prometheus prometheus-alertmanager"; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q prometheus prometheus-alertmanager; \
	fi

demo: $(VENV)/.demo-installed
	$(BIN)/cpimon demo $(ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check models streams agents tests bench
	$(BIN)/ruff format --check models streams agents tests bench

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

test: $(VENV)/.test-installed system-deps lint typecheck
	$(BIN)/pytest $(ARGS)

unit: $(VENV)/.test-installed
	$(BIN)/pytest tests/unit models $(ARGS)

bench: $(VENV)/.test-installed
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .cpimon-data

soak: $(VENV)/.test-installed
	$(BIN)/python -m bench.soak $(ARGS)

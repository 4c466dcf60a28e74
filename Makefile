# Two commands on a fresh machine: `make run` (the gateway on :8080) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run emulator test lint bench loadtest soak capacity clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# `make run` answers calls with the embedded realtime emulator; `make run REALTIME_BACKEND=auto` (or azure,
# openai, url) uses the backend your environment configures instead.
REALTIME_BACKEND ?= emulator

run: install  ## the gateway on GATEWAY_PORT (8080), bridged to the embedded emulator unless REALTIME_BACKEND says
	REALTIME_BACKEND=$(REALTIME_BACKEND) $(PY) -m gateway serve

emulator: install  ## the realtime emulator on its own (port 9090)
	$(PY) -m gateway emulator --port 9090

test: install  ## the whole test suite
	$(PY) -m pytest

lint: install  ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd typings && ../$(VENV)/bin/mypy --config-file ../pyproject.toml

bench: install  ## benchmarks (printed tables): codec cost and quality, barge-in speed and truncate accuracy, tool round trip
	$(PY) -m bench.codec
	$(PY) -m bench.bargein
	$(PY) -m bench.tools

loadtest: install  ## replay recorded calls against `make run`'s gateway (python -m gateway.loadtest --help)
	$(PY) -m gateway.loadtest --url ws://127.0.0.1:8080/media $(ARGS)

capacity: install  ## calls one gateway core carries at p99 added latency <= 10 ms (python -m bench.capacity --help)
	$(PY) -m bench.capacity $(ARGS)

soak: install  ## several minutes of calls with injected faults and hostile clients; fails on any leak
	$(PY) -m bench.soak $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache bench/out

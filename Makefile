# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Tests talk to real servers on 127.0.0.1; Prefect telemetry would lock its SQLite database.
TEST_ENV := DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

.PHONY: install test test-fast demo bench clean

install: $(INSTALLED)

# torch 2.13.0 first and alone: it is the local CPU wheel; a looser spec pulls GBs of CUDA packages.
$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements-dev.txt -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(TEST_ENV) $(BIN)/python -m pytest

# The tests that start no server or process and mount no disk (tests/conftest.py marks the others
# `integration` from the fixtures they use): a check of a change in minutes. CI runs `make test`.
test-fast: install
	$(BIN)/ruff check .
	$(TEST_ENV) $(BIN)/python -m pytest -m "not integration"

demo: install
	$(TEST_ENV) $(BIN)/python -m flows.demo

bench: install
	for script in bench/*.py; do $(TEST_ENV) $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) output workspace .pytest_cache

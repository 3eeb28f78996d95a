# Developer shortcuts. Each target runs the venv's tools; `make venv` makes the venv first.
PY := .venv/bin/python
BIN := .venv/bin

.PHONY: venv test test-all lint format bench ci

venv: $(BIN)/pytest
$(BIN)/pytest: pyproject.toml
	python3 -m venv .venv && $(BIN)/pip install -q -e '.[dev]'
	@touch $@

## the fast tests (not marked slow), on 4 workers: about a minute
test: venv
	$(BIN)/pytest -q -m "not slow" -n 4

## everything CI runs through pytest: end-to-end, fault, cluster and browser tests too
test-all: venv
	$(BIN)/pytest -q

## ruff, ruff format and mypy (strict), as CI runs them
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## fix what ruff can fix, and format
format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## the benchmarks: a table of figures (several minutes); `make bench ARGS=--smoke` for a quick run
bench: venv
	$(PY) tests/bench/run.py $(ARGS)

## what CI runs on a fresh clone
ci:
	bash .ci/run

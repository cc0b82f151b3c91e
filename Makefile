# The two set-up commands: `make quickstart` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart lint test bench clean

install: $(STAMP)

# torch first, pinned to the local CPU build, so that the package's torch range resolves to it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

quickstart: install
	$(BIN)/factordiff quickstart

# ruff's rules and line length are in pyproject.toml; make test runs it before the tests.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info

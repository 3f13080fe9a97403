# raybal: every target creates .venv on first use and installs the package into it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.raybal-installed
RESULTS ?= results/quickstart

.PHONY: quickstart test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## The main job on its embedded default: local, synthetic data.
quickstart: $(STAMP)
	$(BIN)/raybal train studies/quickstart.toml --results $(RESULTS)

## The test suite CI runs (slow tests excluded; see test-all).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

## Everything, including slow calibration / fault-injection tests.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check raybal benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) results .pytest_cache

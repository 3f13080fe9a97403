# raybal: every target creates .venv on first use and installs the package into it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.raybal-installed
RESULTS ?= results/quickstart

.PHONY: quickstart test test-faults test-all lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## The main job on its embedded default: a small study on a local Ray, synthetic data, then `raybal best`.
## Run again, it resumes the study in $(RESULTS) (nothing is re-run) and prints the best trial.
quickstart: $(STAMP)
	if [ -f $(RESULTS)/study.json ]; then $(BIN)/raybal study resume $(RESULTS); \
	else $(BIN)/raybal study run studies/quickstart.toml --results $(RESULTS); fi
	$(BIN)/raybal best $(RESULTS)

## The test suite (slow calibration checks and fault injection excluded; see test-faults and test-all).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not faults" --durations=25 tests

## Fault injection: killed workers, a killed driver, a lost node, failing trials (CI runs it after `test`).
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m "faults and not slow" --durations=10 tests

## Everything, including slow calibration and fault-injection tests.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check raybal benchmarks tests

## Smoke-run every benchmark (--quick); docs/testing.md has the full runs, benchmarks/RESULTS.md their results.
bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b --quick || exit 1; done

## The documentation site (MkDocs), built with --strict into site/; the Config reference page is generated.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) results .pytest_cache site

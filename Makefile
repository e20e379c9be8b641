# issueops — the commands a user and CI run. `make setup && make test` from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: setup test test-all lint format run bench compile kind-up deploy e2e clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel

# torch is installed first and pinned: 2.13.0 is the CPU wheel; any other request pulls CUDA builds.
setup: $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip check

test:
	$(BIN)/python -m pytest -q

test-all:  # includes slow tests; cluster and gpu tests run when KUBECONFIG / a GPU are present
	$(BIN)/python -m pytest -q -m "not cluster and not gpu"

lint:
	$(BIN)/ruff check issueops components pipelines operator tests
	$(BIN)/ruff format --check issueops components pipelines operator tests

format:
	$(BIN)/ruff format issueops components pipelines operator tests
	$(BIN)/ruff check --fix issueops components pipelines operator tests

run:
	$(BIN)/issueops run examples/random_forest_classification.yaml

compile:
	$(BIN)/issueops compile -o build

bench:  # all entries; `make bench BENCH="pipeline webhook"` for some
	$(BIN)/python -m benchmarks $(BENCH)

clean:
	rm -rf build .issueops .pytest_cache

# Quick start: `make demo` (set up, then visualize on the defaults) and `make test`.
# Both are idempotent: the virtual environment in .venv is made once and reused while
# pyproject.toml is unchanged; the tests' real weights are fetched once (tests/sample_data.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-data lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deconvnet visualize

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The real conv weights (into torch.hub's cache, as load_model caches them) and a check of the
# sample photos; quick when all is there.
test-data: $(STAMP)
	$(BIN)/python tests/sample_data.py

test: lint test-data
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/benchmark_projection.py

clean:
	rm -rf $(VENV)

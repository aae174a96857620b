# Quick start: `make demo` (set up, then visualize on the defaults) and `make test`.
# Both are idempotent: the virtual environment in .venv is made once and reused while
# pyproject.toml is unchanged; the tests' real weights are fetched once (tests/sample_data.py).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-isa test-data lint bench setup clean chromium docs

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
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

# The suite in parallel workers (pytest-xdist), one per core and at most four; each worker keeps
# its test modules whole (their module-scoped models, servers and browser are made once) and
# takes its share of the cores' torch threads (tests/conftest.py). `PYTEST_WORKERS=0` runs it
# in one process.
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadscope

test: lint test-data chromium docs
	$(PYTEST)

# The suite with PyTorch's and oneDNN's instruction sets forced down (AVX2; none beyond SSE4.1):
# other kernels round differently, and the tests must hold on any CPU, not only this one's.
test-isa: test-data chromium
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PYTEST)
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 $(PYTEST)

# The documentation site, from docs/ into site/; offline (no plugin fetches anything), and
# --strict turns every warning (a broken link, an undocumented parameter's type) into an error.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python scripts/benchmark_projection.py

# The explorer's page tests (tests/explorer/test_page.py) drive Debian's chromium through Playwright;
# install it when missing (as root, or with sudo). Playwright's own browser download is not used.
chromium:
	command -v chromium >/dev/null || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq \
		&& $(if $(filter 0,$(shell id -u)),,sudo) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

clean:
	rm -rf $(VENV)

# Two commands for a fresh machine (see README.md):
#   make demo   train + test BGAD on the embedded offline dataset, print metrics, write anomaly-map images
#   make test   run the test suite
# Both create .venv in the repo root if it is missing and install the package into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pytest-xdist worker processes for `make test` and `make test-fast` (0: a single pytest process).
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist worksteal
STAMP := $(VENV)/.install-stamp

.PHONY: install demo test test-fast lint format

$(STAMP): pyproject.toml
	@echo "Installing anomalib-bgad and its dependencies into $(VENV) (about 2-3 minutes on a fresh machine)..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/anomalib-bgad demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 $(XDIST)

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(XDIST)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

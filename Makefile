# The two commands of the README: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint check clean gradient-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/modeldepot serve $(ARGS)

LINT_PATHS := $(wildcard src tests bench scripts)

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint gradient-venv
	$(BIN)/pytest $(PYTEST_ARGS)

# The real, unmodified `gradient` 2.0.6 CLI for tests/test_gradient.py, in a venv of its own.
# Its pinned PyYAML 5 has no wheel for Python 3.11 and does not build with Cython 3, and gradient
# crashes under click >= 8.3.1: hence the order and the pins below.
GRADIENT_VENV := .venv-gradient
GRADIENT_STAMP := $(GRADIENT_VENV)/.installed

gradient-venv: $(GRADIENT_STAMP)

$(GRADIENT_STAMP):
	$(PYTHON) -m venv $(GRADIENT_VENV)
	$(GRADIENT_VENV)/bin/pip install --quiet --upgrade pip
	$(GRADIENT_VENV)/bin/pip install --quiet "cython<3" wheel setuptools
	$(GRADIENT_VENV)/bin/pip install --quiet --no-build-isolation "pyyaml==5.4.1"
	$(GRADIENT_VENV)/bin/pip install --quiet "gradient==2.0.6" "click<8.3.1"
	touch $(GRADIENT_STAMP)

clean:
	rm -rf $(VENV) $(GRADIENT_VENV) .pytest_cache .mypy_cache .ruff_cache

# Two entry points a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format format-check imports typecheck bench-quality bench-scale bench-serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch==2.13.0 first: it is the CPU wheel; an unpinned resolve would pull a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/unkd demo

# The formatter, the package contracts and the type check run first: a broken layer fails in seconds.
test: $(STAMP) format-check imports typecheck
	@echo "== tests (pytest $(PYTEST_ARGS)) =="
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) format-check imports typecheck

# One formatter (ruff format, pyproject.toml [tool.ruff]) and the linter; `make format` applies it.
format-check: $(STAMP)
	@echo "== ruff format --check, ruff check =="
	$(BIN)/ruff format --check training service worker tests bench
	$(BIN)/ruff check training service worker tests bench

format: $(STAMP)
	$(BIN)/ruff format training service worker tests bench
	$(BIN)/ruff check --fix training service worker tests bench

# Who may import whom: the contracts in pyproject.toml [tool.importlinter].
imports: $(STAMP)
	@echo "== import contracts (lint-imports) =="
	$(BIN)/lint-imports --no-cache

# mypy with the pydantic plugin over training, worker and service (pyproject.toml [tool.mypy]).
typecheck: $(STAMP)
	@echo "== type check (mypy) =="
	$(BIN)/mypy

bench-quality: $(STAMP)
	$(BIN)/python bench/quality.py

bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py

bench-serve: $(STAMP)
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache

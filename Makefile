# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
COMPAT_VENV ?= .venv-compat
COMPAT_STAMP := $(COMPAT_VENV)/.installed

.PHONY: demo demo-check test lint typecheck pytest test-services test-compat format bench catalog catalog-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	@echo "demo lands with the example project; nothing to serve yet."

demo-check: $(STAMP)
	@echo "demo-check lands with the example project; nothing to check yet."

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The database- and cache-backed tests against real PostgreSQL and Redis servers.
test-services: $(STAMP)
	LLMROUTE_TEST_DATABASE_URL=$(TEST_DATABASE_URL) LLMROUTE_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/pytest -q -m 'not e2e' tests/django
	LLMROUTE_TEST_REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest -q -m redis tests/core

# Django 6 needs Python >= 3.12: the Django and core tests again on the newest Django.
$(COMPAT_STAMP): pyproject.toml
	$${COMPAT_PYTHON:-$$(scripts/find_python.sh 3.12)} -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install -q -e '.[dev]' 'django>=6,<7'
	touch $(COMPAT_STAMP)

test-compat: $(COMPAT_STAMP)
	$(COMPAT_VENV)/bin/python -c 'import django, sys; print("compat: Python", sys.version.split()[0], "Django", django.__version__)'
	$(COMPAT_VENV)/bin/pytest -q -m 'not e2e' tests/core tests/django

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

catalog: $(STAMP)
	$(BIN)/python scripts/build_catalog.py

# Needs PyPI: rebuilds the snapshot from the pinned price file and diffs it.
catalog-check: $(STAMP)
	$(BIN)/python scripts/build_catalog.py --check

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build *.egg-info .mypy_cache .ruff_cache

# The two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
COMPAT_VENV ?= .venv-compat
COMPAT_STAMP := $(COMPAT_VENV)/.installed
# Browser tests: Playwright drives the system's Chromium (never a downloaded one).
E2E_STAMP := $(VENV)/.e2e
CHROMIUM ?= /usr/bin/chromium
DEMO_PORT ?= 8000

.PHONY: demo demo-check e2e e2e-deps screenshots test lint typecheck pytest test-services test-compat format bench catalog catalog-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# (setup.py builds the optional C word pass: a change to it is built again)
BUILD_FILES := pyproject.toml setup.py routing_middleware/_wordscan.c routing_middleware/_messagescan.c routing_middleware/_records.c routing_middleware/_costs.c

$(STAMP): $(BIN)/python $(BUILD_FILES)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Migrate and seed (idempotent), then serve the example site in the foreground.
demo: $(STAMP)
	$(BIN)/python example_project/manage.py seed_demo --migrate --site http://127.0.0.1:$(DEMO_PORT)
	$(BIN)/python example_project/manage.py runserver 127.0.0.1:$(DEMO_PORT)

# The same setup in a temporary directory, served on a free port and checked over HTTP.
demo-check: $(STAMP)
	$(BIN)/python example_project/demo_check.py

$(E2E_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q playwright
	touch $(E2E_STAMP)

# Playwright, and Chromium from apt-get when it is missing (needs root, as on CI).
e2e-deps: $(E2E_STAMP)
	@test -x $(CHROMIUM) || { echo "No Chromium at $(CHROMIUM): installing it with apt-get (needs root)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

e2e: e2e-deps
	LLMROUTE_E2E_REQUIRED=1 LLMROUTE_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -q -m e2e tests/e2e $(PYTEST_ARGS)

# Regenerates the PNGs under docs/ from a freshly seeded demo.
screenshots: e2e-deps
	LLMROUTE_CHROMIUM=$(CHROMIUM) $(BIN)/python example_project/screenshots.py

test: lint typecheck pytest e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m 'not e2e' $(PYTEST_ARGS)

# The database- and cache-backed tests against real PostgreSQL and Redis servers.
test-services: $(STAMP)
	LLMROUTE_TEST_DATABASE_URL=$(TEST_DATABASE_URL) LLMROUTE_TEST_REDIS_URL=$(TEST_REDIS_URL) \
		$(BIN)/pytest -q -m 'not e2e' tests/django
	LLMROUTE_TEST_REDIS_URL=$(TEST_REDIS_URL) $(BIN)/pytest -q -m redis tests/core

# Django 6 needs Python >= 3.12: the Django and core tests again on the newest Django.
$(COMPAT_STAMP): $(BUILD_FILES)
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
	rm -rf $(VENV) $(COMPAT_VENV) build *.egg-info .mypy_cache .ruff_cache routing_middleware/*.so

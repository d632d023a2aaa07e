# The one entry point: `make help` lists the targets. Every target sets up the
# virtual env (and the package in editable mode) itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: help demo test test-unit check format bench docs clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the example app against the local MariaDB and Redis
	$(PY) examples/demo.py

# Ports nobody listens on: the server-free tier runs with these, which proves it
# needs neither MariaDB nor Redis.
NO_SERVERS := FLUXAORM_TEST_MYSQL_URL=mysql://root@127.0.0.1:1/none \
	FLUXAORM_TEST_REDIS_URL=redis://127.0.0.1:1/0

test: $(STAMP)  ## run the whole test suite: tests/unit without servers, then the rest against the real services
	$(NO_SERVERS) $(PY) -m pytest tests/unit
	$(PY) -m pytest --ignore=tests/unit

test-unit: $(STAMP)  ## run only the tests that need no server (tests/unit): no MariaDB or Redis needed
	$(NO_SERVERS) $(PY) -m pytest tests/unit

check: $(STAMP)  ## ruff format --check, ruff check, mypy --strict
	$(VENV)/bin/ruff format --check fluxaorm tests benchmarks examples
	$(VENV)/bin/ruff check fluxaorm tests benchmarks examples
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff format and the safe ruff fixes
	$(VENV)/bin/ruff format fluxaorm tests benchmarks examples
	$(VENV)/bin/ruff check --fix fluxaorm tests benchmarks examples

bench: $(STAMP)  ## race fluxaorm against hand-written baselines (see docs/benchmarks.md)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/run.py
	$(PY) benchmarks/run.py --only cluster

docs: $(STAMP)  ## build the MkDocs site into site/
	$(VENV)/bin/mkdocs build --strict

clean:  ## remove the virtual env and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis site

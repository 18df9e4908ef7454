# Quick start targets. `make test` and `make demo` work on a fresh machine (CPU is enough).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Tests run in parallel on all cores; set PYTEST_ARGS to pass more (e.g. -m "not slow").
PYTEST_ARGS ?= -m "not slow"

.PHONY: venv test test-all bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -n auto $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -n auto

bench: venv
	$(PY) benchmarks/modconv.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

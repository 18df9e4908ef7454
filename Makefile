# Quick start targets. `make test` and `make demo` work on a fresh machine (CPU is enough).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Tests run in parallel on all cores; set PYTEST_ARGS to pass more (e.g. -m "not slow").
PYTEST_ARGS ?= -m "not slow"

# The demo: stage 1 on the built-in synthetic faces at 32 px, about 8 minutes on a 2-core CPU (6 of them training).
DEMO_DIR ?= runs/demo
DEMO_MINUTES ?= 6
DEMO_ARGS ?=

.PHONY: venv test test-all bench demo clean

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

demo: venv
	$(VENV)/bin/semgan prepare synthetic --resolution 32 --data-dir $(DEMO_DIR)/data
	$(VENV)/bin/semgan train-gan --config experiments/synthetic_32.py --workdir $(DEMO_DIR)/stage1 \
		$(if $(wildcard $(DEMO_DIR)/stage1/checkpoints/*),--resume) \
		--config.data.data_dir=$(DEMO_DIR)/data --config.log.max_minutes=$(DEMO_MINUTES) $(DEMO_ARGS)
	@echo "samples: $(DEMO_DIR)/stage1/samples/  metrics: $(DEMO_DIR)/stage1/metrics.jsonl"

bench: venv
	$(PY) benchmarks/modconv.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

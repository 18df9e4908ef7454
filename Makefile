# Quick start targets. `make test` and `make demo` work on a fresh machine (CPU is enough).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Tests run in parallel on all cores; set PYTEST_ARGS to pass more (e.g. -m "not slow").
# A crashed xdist worker fails the run instead of being replaced (a replaced worker has been seen
# to hang the run), and a test that hangs fails after 20 minutes.
PYTEST_ARGS ?= -m "not slow"
PYTEST_GUARD := --max-worker-restart=0 --timeout=1200

# The demo: the whole pipeline on the built-in synthetic faces at 32 px, about 14 minutes (plus the install) on a
# 2-core CPU: stage 1 (GAN), stage 2 (encoder), then segmentation of held-out in-domain (test) and
# out-of-domain (test_ood) images by the encoder alone and by encoder + inversion, scored and
# shown in PNG grids. The minutes are training time (compiling is not counted); stage 2 gets
# the larger share (docs/learning.md section 5); the oracle metrics are off here (the
# oracle takes ~4 minutes to build once: `semgan oracle synthetic --data-dir runs/demo/data`).
DEMO_DIR ?= runs/demo
DEMO_GAN_MINUTES ?= 4
DEMO_ENCODER_MINUTES ?= 4.5
DEMO_EVAL_IMAGES ?= 64
SEMGAN := $(VENV)/bin/semgan
resume_if = $(if $(wildcard $(1)/checkpoints/*),--resume)

.PHONY: venv test test-all bench demo clean

# The exact versions of constraints.txt (setup.cfg has the compatible ranges).
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -n auto --dist loadfile $(PYTEST_GUARD) $(PYTEST_ARGS)

test-all: venv
	$(PY) -m pytest -n auto --dist loadfile $(PYTEST_GUARD)

demo: venv
	$(SEMGAN) prepare synthetic --resolution 32 --data-dir $(DEMO_DIR)/data
	$(SEMGAN) train-gan --config experiments/synthetic_32.py --workdir $(DEMO_DIR)/stage1 \
		$(call resume_if,$(DEMO_DIR)/stage1) --config.data.data_dir=$(DEMO_DIR)/data \
		--config.log.max_minutes=$(DEMO_GAN_MINUTES) --config.eval.oracle=False
	$(SEMGAN) train-encoder --config experiments/synthetic_32_encoder.py --workdir $(DEMO_DIR)/stage2 \
		$(call resume_if,$(DEMO_DIR)/stage2) --config.stage1=$(DEMO_DIR)/stage1 \
		--config.log.max_minutes=$(DEMO_ENCODER_MINUTES)
	for split in test test_ood; do \
		$(SEMGAN) evaluate --checkpoint $(DEMO_DIR)/stage2 --split $$split --limit $(DEMO_EVAL_IMAGES) --batch 32 \
			--out $(DEMO_DIR)/eval/$$split.json --grid $(DEMO_DIR)/eval/$$split.png || exit 1; \
		$(SEMGAN) evaluate --checkpoint $(DEMO_DIR)/stage2 --split $$split --limit $(DEMO_EVAL_IMAGES) --batch 32 \
			--step 0 --out $(DEMO_DIR)/eval/$$split.encoder.json --grid $(DEMO_DIR)/eval/$$split.encoder.png || exit 1; \
	done
	@echo "stage 1 samples (G_ema, image | mask): $(DEMO_DIR)/stage1/samples/$$(ls $(DEMO_DIR)/stage1/samples | tail -1)"
	@echo "stage 2 samples: $(DEMO_DIR)/stage2/samples/"
	@$(PY) -c 'import json, sys; d = sys.argv[1]; m = lambda s, k: json.load(open("%s/eval/%s%s.json" % (d, s, k)))["dataset"]["miou"]; print("\n".join("segmentation %-8s mIoU %.3f encoder + optimisation, %.3f encoder only  %s/eval/%s.png, %s.encoder.png (input | prediction | truth)" % (s, m(s, ""), m(s, ".encoder"), d, s, s) for s in ("test", "test_ood")))' $(DEMO_DIR)

bench: venv
	$(PY) benchmarks/modconv.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

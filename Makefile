# Two entry points, each installing what is missing into .venv first:
#   make demo   run `midog detect` on the real slide (inference install only)
#   make test   run the whole test suite (training install, mmcv built from source)
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CORE_STAMP := $(VENV)/.midog-core
TRAIN_STAMP := $(VENV)/.midog-train

.PHONY: demo test test-fast install install-train benchmark clean

demo: $(CORE_STAMP)
	$(VENV)/bin/midog detect $(DATA)/slides/cmu-1-small-region.svs --output out/demo

test: $(TRAIN_STAMP)
	MIDOG_SHARED_DATA=$(abspath $(DATA)) $(VENV)/bin/pytest

test-fast: $(TRAIN_STAMP)
	MIDOG_SHARED_DATA=$(abspath $(DATA)) $(VENV)/bin/pytest -m "not slow"

install: $(CORE_STAMP)
install-train: $(TRAIN_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(CORE_STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e ".[cpu]"
	touch $@

# torch: keep a build that is already installed (e.g. CUDA); else the CPU build 2.13.0.
# mmcv 2.1 (mmdet 3.3 needs < 2.2) has no wheel for this torch: it is compiled
# once (about 9 minutes on 2 cores) and pip caches the wheel for later installs.
$(TRAIN_STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q "setuptools<81" wheel ninja
	$(PY) -c "import mmcv.ops" 2>/dev/null || MMCV_WITH_OPS=1 MAX_JOBS=2 $(PIP) install --no-build-isolation mmcv==2.1.0
	$(PIP) install -q -e ".[cpu,train,dev]"
	touch $(CORE_STAMP) $@

clean:
	rm -rf out work_dirs

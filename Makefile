# The two commands a newcomer needs: `make demo` and `make test`. See README.md.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO := data/demo
DEMO_COUNT ?= 12

.PHONY: install demo ohif system-deps test test-fast pretrain backbone montage clean-demo

$(BIN)/monailabel: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

install: $(BIN)/monailabel

$(DEMO)/.generated: | install
	$(BIN)/python -m phantoms.generate --studies $(DEMO) --count $(DEMO_COUNT)
	touch $@

# Serves the app on the demo phantoms, bound to localhost only.
demo: install $(DEMO)/.generated
	@echo "MONAI Label with the SLPT app: http://$(HOST):$(PORT)/  (API docs at /docs)"
	PATH=$(abspath $(BIN)):$$PATH \
	  $(BIN)/monailabel start_server --app . --studies $(DEMO) --host $(HOST) --port $(PORT)

# Orthanc, its DICOMweb plugin and headless Chromium (Debian packages, no browser download), for
# `make ohif` and tests/browser. Installs only what is missing; apt-get needs root.
SYSTEM_PACKAGES := orthanc orthanc-dicomweb chromium chromium-driver
system-deps:
	@if [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
	  && command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  echo "system packages present: $(SYSTEM_PACKAGES)"; \
	else \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PACKAGES); \
	fi

# Orthanc (DICOMweb on 127.0.0.1:8042) with the demo CT series, the app on it, and OHIF at
# http://127.0.0.1:8000/ohif/. Ctrl-C stops all of it. See README, "Annotating in OHIF".
ohif: install system-deps
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m tools.ohif_chain --port $(PORT)

# The whole suite (CI's command). `test-fast`: the method and the adapters without any server, for the inner loop.
test: install
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not server and not orthanc and not browser and not slow" tests

# Four runs, each from the weights of the one before: the task phantoms from scratch, then at a lower learning
# rate; then torso scans (phantoms/torso.py: chest to pelvis, randomised intensities) mixed with the task
# phantoms, so that the liver is told from the heart, the diaphragm and muscle on real CT, twice: the first
# still resampling before the intensity window, as the phantom stages did, the last windowing first.
pretrain: install
	$(BIN)/python -m benchmarks.pretrain --out data/pretrain/stage1 --resample-first
	$(BIN)/python -m benchmarks.pretrain --out data/pretrain/stage2 --init-from data/pretrain/stage1 \
	  --lr 1e-3 --iterations 400 --resample-first
	$(BIN)/python -m benchmarks.pretrain --out data/pretrain/stage3 --init-from data/pretrain/stage2 \
	  --lr 1e-3 --iterations 1000 --torso-seeds 800000 800080 --torso-val-seeds 810000 810016 --resample-first
	$(BIN)/python -m benchmarks.pretrain --out models/backbone --init-from data/pretrain/stage3 \
	  --lr 1e-3 --iterations 1200 --torso-seeds 800000 800080 --torso-val-seeds 810000 810016

# The MONAI model zoo's wholeBody_ct_segmentation bundle (a SegResNet trained on real CTs, TotalSegmentator's
# 104 structures), fetched once into models/; serve it with --conf slpt_backbone models/wholeBody_ct_segmentation
# (docs/backbone.md). The app itself never downloads.
backbone: install
	$(BIN)/python -m tools.fetch_backbone --bundle-dir models

montage: install
	$(BIN)/python -m phantoms.montage --out docs/phantoms.png

clean-demo:
	rm -rf $(DEMO)

# Quick start targets. Both work from a fresh clone on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEMO_DIR ?= runs/demo
DEFEAT ?= $(PYTHON) -m defeat
# reinstall only when the package's metadata changes (an editable install sees source edits by itself)
INSTALLED := build/.installed
INSTALLED_DEV := build/.installed-dev
INSTALLED_ALL := build/.installed-all

.PHONY: install install-dev install-all demo demo-train test test-all lint format clean

install: $(INSTALLED)
install-dev: $(INSTALLED_DEV)
install-all: $(INSTALLED_ALL)

$(INSTALLED): pyproject.toml
	$(PIP) install -q -e .
	@mkdir -p build && touch $@

$(INSTALLED_DEV): pyproject.toml
	$(PIP) install -q -e ".[dev]"
	@mkdir -p build && touch $@ $(INSTALLED)

# CI: the dev extras plus every optional integration the tests cover (the yolo extra: Ultralytics)
$(INSTALLED_ALL): pyproject.toml
	$(PIP) install -q -e ".[dev,yolo]"
	@mkdir -p build && touch $@ $(INSTALLED_DEV) $(INSTALLED)

# The main job on the embedded default: the DeFeat study in small (`defeat reproduce --preset quick`): generates
# the embedded benchmark, trains the teacher and the students, runs the analyses, writes report.md (<= 15 min).
demo: install
	$(DEFEAT) reproduce --preset quick --out $(DEMO_DIR)/reproduce_quick

# A single detector trained from scratch on the embedded benchmark (8 min): the training engine alone.
demo-train: install
	$(DEFEAT) data synth --out $(DEMO_DIR)/synth --seed 0
	$(DEFEAT) train configs/demo.yaml --set output.dir=$(DEMO_DIR)/faster_rcnn_r18 \
		--set data.train_images=$(DEMO_DIR)/synth/train --set data.train_annotations=$(DEMO_DIR)/synth/train.json \
		--set data.val_images=$(DEMO_DIR)/synth/val --set data.val_annotations=$(DEMO_DIR)/synth/val.json

# The fast tier: tiny detectors, <= 3 min on 2 cores.
test: install-dev
	$(PYTHON) -m pytest -q -m "not slow"

# Everything CI runs: the linter, the formatter's check, then both tiers (full-size training included), with the
# optional extras installed so that no test skips for a missing one (the YOLO tests need the yolo extra).
test-all: install-all lint
	$(PYTHON) -m pytest -q

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: install-dev
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache

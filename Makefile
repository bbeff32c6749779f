# Quick start targets. Both work from a fresh clone on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEMO_DIR ?= runs/demo
DEFEAT ?= $(PYTHON) -m defeat

.PHONY: install install-dev demo demo-train test clean

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e ".[dev]"

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

test: install-dev
	$(PYTHON) -m pytest -q

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache

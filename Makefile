# Quick start targets. Both work from a fresh clone on a fresh machine.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEMO_DIR ?= runs/demo

.PHONY: install install-dev demo test bench clean

install:
	$(PIP) install -q -e .

install-dev:
	$(PIP) install -q -e ".[dev]"

demo: install
	defeat reproduce --preset quick --out $(DEMO_DIR)

test: install-dev
	$(PYTHON) -m pytest -q

clean:
	rm -rf runs build *.egg-info src/*.egg-info .pytest_cache
